"""One checkpoint format for every model, written atomically and loadable with weights_only=True; its weights are
also written as safetensors."""

from __future__ import annotations

import json
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


def save_weights(state: dict, path: str | Path) -> None:
    """The checkpoint's weights alone as safetensors (readable with no picolm and no pickle), atomically.

    A tied tensor is stored once; metadata `aliases` maps each other name to it (`load_weights` restores them), and
    `model_config` / `architecture` / `global_step` say what the weights are."""
    path = Path(path)
    from safetensors.torch import save_file

    tensors, aliases, seen = {}, {}, {}
    for name, tensor in state["model_state_dict"].items():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tensor.stride())
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            tensors[name] = tensor.detach().contiguous()
    metadata = {"format": "pt", "architecture": state["architecture"], "model_config": json.dumps(state["model_config"]),
                "global_step": str(state.get("global_step", 0)), "aliases": json.dumps(aliases)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A `save_weights` file -> (the model's full state dict, its metadata with model_config parsed)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PicolmError("no such weights file", path=path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # the safetensors reader raises its own error types
        raise PicolmError(f"not a readable safetensors file ({type(exc).__name__})", path=path) from None
    for name, target in json.loads(metadata.get("aliases", "{}")).items():
        tensors[name] = tensors[target]
    if "model_config" in metadata:
        metadata["model_config"] = json.loads(metadata["model_config"])
    return tensors, metadata


def load_checkpoint(path: str | Path, map_location="cpu", mmap: bool = False) -> dict:
    """`mmap=True` maps tensors lazily from the file: reading only the weights skips the optimizer state."""
    path = Path(path)
    if not path.is_file():
        raise PicolmError("no such checkpoint", path=path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # a corrupt or foreign pickle raises many types
        if type(exc).__name__ == "UnpicklingError" and "GLOBAL" in str(exc):  # names a class or function to call
            raise PicolmError("refused: the file holds Python objects other than tensors; picolm loads only weights "
                              "(weights_only=True) and never runs code from a checkpoint", path=path) from None
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
