"""One checkpoint format for every model, written atomically and loadable with weights_only=True; its weights are
also written as safetensors."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from picolm.errors import PicolmError, first_line

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "architecture", "model_config", "model_state_dict")


class _WriteErrors:
    """A file whose write errors are kept: torch.save reports a failed write (a full disk) as its own RuntimeError
    about stream positions, and the OSError underneath is what the user needs to read."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name):
        return getattr(self.file, name)


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def save_checkpoint(state: dict, path: str | Path, weights: str | Path | None = None) -> None:
    """Write the checkpoint (and, with `weights`, its weights as safetensors) to temporary files in the same folder,
    then rename: a crash never leaves a torn file, and a failed write (a full or read-only disk) keeps the earlier
    pair, removes the temporary files and names the path and the cause in one line. The checkpoint is renamed
    first: a kill between the two renames leaves the safetensors one save behind, never ahead."""
    path = Path(path)
    targets = ([Path(weights)] if weights is not None else []) + [path]
    recorder, written = None, []
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if weights is not None:
            written.append(_tmp(targets[0]))
            _write_weights(state, written[-1])
        written.append(_tmp(path))
        with written[-1].open("wb") as f:
            recorder = _WriteErrors(f)
            torch.save({"format_version": FORMAT_VERSION, **state}, recorder)
            f.flush()
            os.fsync(f.fileno())
    except Exception as exc:  # OSError, torch's RuntimeError, safetensors' own error type
        for tmp in written:
            tmp.unlink(missing_ok=True)
        cause = (recorder and recorder.error) or exc
        raise PicolmError(f"could not write the checkpoint ({_cause(cause)}); the previous one is kept",
                          path=targets[len(written) - 1] if written else path) from None
    for tmp, target in reversed(list(zip(written, targets, strict=True))):
        os.replace(tmp, target)


def link_checkpoint(source: str | Path, target: str | Path) -> None:
    """Give `target` the checkpoint pair of `source` (the .pt and its .safetensors) without writing it again: hard
    links where the file system has them, copies elsewhere. Placed as `save_checkpoint` places its files (temporary
    names, the checkpoint renamed first), so a later save of either name replaces its own files only."""
    source, target = Path(source), Path(target)
    pairs = [(source.with_suffix(".safetensors"), target.with_suffix(".safetensors")), (source, target)]
    written = []
    try:
        for original, name in pairs:
            written.append(_tmp(name))
            written[-1].unlink(missing_ok=True)
            try:
                os.link(original, written[-1])
            except OSError:  # no hard links on this file system (FAT, some network shares)
                shutil.copyfile(original, written[-1])
                with written[-1].open("rb") as f:
                    os.fsync(f.fileno())
    except OSError as exc:
        for tmp in written:
            tmp.unlink(missing_ok=True)
        raise PicolmError(f"could not write the checkpoint ({_cause(exc)}); the previous one is kept",
                          path=pairs[len(written) - 1][1]) from None
    for tmp, (_, name) in reversed(list(zip(written, pairs, strict=True))):
        os.replace(tmp, name)


def _cause(exc: BaseException) -> str:
    """The operating system's reason, also where a library wraps it (safetensors says "... (os error 28)")."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    code = re.search(r"os error (\d+)", str(exc))
    return os.strerror(int(code.group(1))) if code else first_line(exc)


def _write_weights(state: dict, path: Path) -> None:
    """The checkpoint's weights alone as safetensors (readable with no picolm and no pickle).

    A tied tensor is stored once; metadata `aliases` maps each other name to it (`load_weights` restores them), and
    `model_config` / `architecture` / `global_step` say what the weights are."""
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
    save_file(tensors, str(path), metadata=metadata)
    with path.open("rb") as f:
        os.fsync(f.fileno())


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A checkpoint's safetensors weights file -> (the model's full state dict, its metadata with model_config parsed)."""
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
