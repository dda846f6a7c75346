"""Linear products on a CPU through oneDNN where it beats MKL, the other of PyTorch's CPU matrix libraries.

`Linear` is `nn.Linear` with its float32 CPU product computed by oneDNN (`mkldnn._linear_pointwise`) rather than MKL
(which `F.linear` calls) at training sizes: 1.1-1.25x faster there, which made DPO training 6% faster end to end
(docs/BENCHMARKS.md); its gradients are nn.Linear's own products. `packed_product` multiplies by weights packed once
for oneDNN, as inductor packs them for a dynamic batch, for the products of a decoding step big enough to pay for
oneDNN's dearer calls: float32 decoded 1.3-1.4x faster than by MKL at 8 rows, bfloat16 2x faster than `F.linear` at
one row. Both give the numbers of an ordinary product, to rounding."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


# a oneDNN call costs about 15 us more than MKL's: below this many multiply-adds (a training batch's) it was no faster
ONEDNN_FROM = 2**24
# private operations (inductor's), so looked up rather than assumed: a PyTorch without them multiplies as nn.Linear
HAS_ONEDNN_LINEAR = all(hasattr(torch.ops.mkldnn, name) for name in ("_linear_pointwise", "_reorder_linear_weight"))


def onednn_available() -> bool:
    return HAS_ONEDNN_LINEAR and torch.backends.mkldnn.is_available()


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN takes this product: float32 on a CPU with oneDNN, outside CPU autocast (whose bfloat16 casts
    belong to `F.linear`) and torch.compile (which packs products its own way), and big enough to pay for the call."""
    return (x.numel() // max(x.shape[-1], 1) * weight.numel() >= ONEDNN_FROM  # first: most calls stop here
            and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and onednn_available()
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


def worth_packing(weight: torch.Tensor, rows: int) -> bool:
    """Whether a float32 product of `rows` rows is faster packed for oneDNN than by MKL. A oneDNN call costs about 15
    us more than MKL's; per weight it is faster, a lot faster from two rows on, where MKL leaves its matrix-vector
    path. The crossovers measured here (docs/BENCHMARKS.md): between 262k and 590k weights for one row, between 65k
    and 147k for 2-8 rows."""
    return weight.numel() >= (2**19 if rows == 1 else 2**17)


def packed_product(weight: torch.Tensor, bias: torch.Tensor | None,
                   rows: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """x (N, in) -> x W^T + b by `weight` (out, in) packed for products of about `rows` rows, in the weight's dtype;
    None where there is no packed form (off the CPU, a PyTorch without oneDNN, another dtype) or, for float32, where
    it is not worth packing."""
    if not (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16) and onednn_available()):
        return None
    if weight.dtype == torch.float32 and not worth_packing(weight, rows):
        return None
    # packed for a single row, oneDNN picks a layout that ran slower here than for two: never fewer than two
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(rows, 2))
    bias = None if bias is None else bias.detach()
    return lambda x: _onednn_product(x, packed, bias)
