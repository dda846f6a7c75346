"""One checkpoint format for every model, written atomically and loadable with weights_only=True."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from picolm.errors import PicolmError

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "architecture", "model_config", "model_state_dict")


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        torch.save({"format_version": FORMAT_VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu", mmap: bool = False) -> dict:
    """`mmap=True` maps tensors lazily from the file: reading only the weights skips the optimizer state."""
    path = Path(path)
    if not path.is_file():
        raise PicolmError("no such checkpoint", path=path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # a corrupt or foreign pickle raises many types
        raise PicolmError(f"not a readable checkpoint ({type(exc).__name__})", path=path) from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise PicolmError("not a picolm checkpoint (missing format_version/model_config)", path=path)
    if state["format_version"] > FORMAT_VERSION:
        raise PicolmError(f"checkpoint format {state['format_version']} is newer than this picolm understands",
                          path=path)
    return state


def find_checkpoint(target: str | Path) -> Path:
    """A checkpoint file itself, or the best (else last) checkpoint of a run directory."""
    target = Path(target)
    if target.is_file():
        return target
    if not target.exists():
        raise PicolmError("no such run directory or checkpoint", path=target)
    for name in ("best.pt", "last.pt"):
        if (target / "checkpoints" / name).is_file():
            return target / "checkpoints" / name
    raise PicolmError("no checkpoints/best.pt or last.pt in this run directory", path=target)
