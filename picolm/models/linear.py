"""Linear products on a CPU through oneDNN, the faster of PyTorch's two CPU matrix libraries at these shapes.

`Linear` is `nn.Linear` with its float32 CPU product computed by oneDNN (`mkldnn._linear_pointwise`) rather than MKL
(which `F.linear` calls): 1.25x faster at training shapes here, which made DPO training 6% faster end to end
(docs/BENCHMARKS.md); its gradients are nn.Linear's own products. `packed_product` multiplies by weights packed once
for oneDNN, as inductor packs them for a dynamic batch, for the many small products of a decoding step: float32
decoded 1.4x faster than by MKL at 8 rows and 1.07x at one, bfloat16 2x faster than `F.linear` at one row. Both give
the numbers of an ordinary product, to rounding."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


# private operations (inductor's), so looked up rather than assumed: a PyTorch without them multiplies as nn.Linear
HAS_ONEDNN_LINEAR = all(hasattr(torch.ops.mkldnn, name) for name in ("_linear_pointwise", "_reorder_linear_weight"))


def onednn_available() -> bool:
    return HAS_ONEDNN_LINEAR and torch.backends.mkldnn.is_available()


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN takes this product: float32 on a CPU with oneDNN, outside CPU autocast (whose bfloat16 casts
    belong to `F.linear`) and torch.compile (which packs products its own way)."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and onednn_available()
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


def _onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """x W^T + b by oneDNN; the backward is nn.Linear's."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = rows.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_bias = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if onednn_applies(x, self.weight):
            return _OneDNNLinear.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def packed_product(weight: torch.Tensor, bias: torch.Tensor | None,
                   rows: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """x (N, in) -> x W^T + b by `weight` (out, in) packed for products of about `rows` rows, in the weight's dtype;
    None where there is no packed form (off the CPU, a PyTorch without oneDNN, another dtype)."""
    if not (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16) and onednn_available()):
        return None
    # packed for a single row, oneDNN picks a layout that ran slower here than for two: never fewer than two
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(rows, 2))
    bias = None if bias is None else bias.detach()
    return lambda x: _onednn_product(x, packed, bias)
