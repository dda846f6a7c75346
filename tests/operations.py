"""`OperationCount`: the tensor operations that run inside a `with` block, counted and named, for tests that hold a
code path to the operations it runs (how many, which products)."""

from torch.utils._python_dispatch import TorchDispatchMode


class OperationCount(TorchDispatchMode):
    """`count`: how many tensor operations ran inside the block; `names`: which, as "namespace.name"."""

    def __enter__(self):
        self.count, self.names = 0, set()
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        self.names.add(f"{func.namespace}.{func.__name__.split('.')[0]}")
        return func(*args, **(kwargs or {}))
