"""Linear products by weights packed once for oneDNN, for the many small products of a decoding step on a CPU.

Packed as inductor packs them for a dynamic batch (`mkldnn._reorder_linear_weight`), float32 weights decoded 1.4x
faster than by MKL at 8 rows and 1.07x at one, and bfloat16 ones 2x faster than `F.linear` at one row
(docs/BENCHMARKS.md). The numbers are those of an ordinary product: float32 products agree with `F.linear` to
rounding, bfloat16 ones exactly in the measurements there."""

from __future__ import annotations

from collections.abc import Callable

import torch


def packed_product(weight: torch.Tensor, bias: torch.Tensor | None,
                   rows: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """x (N, in) -> x W^T + b by `weight` (out, in) packed for products of about `rows` rows, in the weight's dtype;
    None where there is no packed form (off the CPU, a PyTorch without oneDNN, another dtype)."""
    if not (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available()):
        return None
    # packed for a single row, oneDNN picks a layout that ran slower here than for two: never fewer than two
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(rows, 2))
    bias = None if bias is None else bias.detach()

    def product(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return product
