"""Where a model runs and in what precision: the device and autocast choices every verb shares."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from picolm.errors import PicolmError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(name: str, field: str = "train.device") -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; a named device must exist on this machine."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PicolmError(f"unknown device {name!r} ({', '.join(DEVICES)})", field=field) from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise PicolmError(f"{name} is not available on this machine", field=field)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PicolmError("mps is not available on this machine", field=field)
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for float32. CPUs default to float32: their bf16 matmuls are far slower."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if precision == "fp16" and device.type == "cpu":
        raise PicolmError("fp16 autocast needs a GPU", field="train.precision")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A fresh autocast context for `dtype` on `device`, or a no-op for float32."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)
