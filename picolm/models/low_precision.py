"""Weight-only low precision for inference: every linear layer's weights stored in bfloat16, or in int8 with one
bfloat16 scale per output row (symmetric, round to nearest), while the residual stream, the norms and the KV cache
stay float32; the products take and give bfloat16. It changes the numbers (a little), so it is an option of the
inference verbs, never the default.

On a CPU the int8 product runs through PyTorch's weight-only kernel (`_weight_int8pack_mm`, bfloat16 activations),
the same one gpt-fast and torchao use; layers whose input width it does not take, and other devices, dequantise the
weights for each product instead (correct, not fast)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from picolm.config import WEIGHT_DTYPES
from picolm.models.linear import packed_product

INT8_KERNEL_WIDTH = 16  # _weight_int8pack_mm crashes on CPU for input widths that are not a multiple of this


class LowPrecisionLinear(nn.Module):
    """A linear layer's weights kept in a low precision; `weight` is their float32 value (for code that reads the
    matrix itself, such as the fused head + cross-entropy), `product` the fast form a decoding step calls."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16).clone())

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in) -> x W^T + b (N, out) in bfloat16: a decoding step feeds one product's output to the next
        (through GELU) without converting it back and forth."""
        raise NotImplementedError

    def product_for(self, rows: int):
        """`product` as a decoding step of `rows` rows calls it (the same numbers, in a faster form where one is)."""
        return self.product

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product(x.reshape(-1, self.in_features)).to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class BFloat16Linear(LowPrecisionLinear):
    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        self.register_buffer("stored", linear.weight.detach().to(torch.bfloat16).clone())

    @property
    def weight(self) -> torch.Tensor:
        return self.stored.float()

    def product(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.stored, self.bias)

    def product_for(self, rows: int):
        packed = packed_product(self.stored, self.bias, rows)
        return self.product if packed is None else lambda x: packed(x.to(torch.bfloat16))


class Int8Linear(LowPrecisionLinear):
    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        weight = linear.weight.detach().float()
        # the kernel takes bfloat16 scales: round them first, so `weight` is exactly what it multiplies by
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.bfloat16).tiny).to(torch.bfloat16)
        self.register_buffer("stored", (weight / scales.float()[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales)
        self.fits_kernel = self.in_features % INT8_KERNEL_WIDTH == 0

    @property
    def weight(self) -> torch.Tensor:
        return self.stored.float() * self.scales.float()[:, None]

    def product(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.bfloat16)
        if not (self.fits_kernel and x.is_cpu):  # the kernel where it is known to work; else dequantise
            return F.linear(x, self.weight.to(torch.bfloat16), self.bias)
        y = torch.ops.aten._weight_int8pack_mm(x, self.stored, self.scales)
        return y if self.bias is None else y + self.bias


LOW_PRECISION = {"bfloat16": BFloat16Linear, "int8": Int8Linear}


def with_weights_in(model: nn.Module, dtype: str) -> nn.Module:
    """The model with every linear layer's weights in `dtype` (float32: as it is), in place; the token embedding
    stays float32 even where the head shares its weights."""
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights in {dtype!r}: must be one of {', '.join(WEIGHT_DTYPES)}")
    if dtype == "float32":
        return model
    kind = LOW_PRECISION[dtype]
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, kind(child))
    return model
