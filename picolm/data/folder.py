"""A data folder (or an export) is built beside its target and renamed into place: a reader (or a `prepare` killed midway) sees the
old folder or the complete new one, never a mix of the two. The target is replaced only if it is a picolm data
folder (it has meta.json) or empty; a folder holding anything else is the user's and is refused."""

from __future__ import annotations

import ctypes
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from picolm.errors import PicolmError
from picolm.locks import lock_beside

AT_FDCWD, RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux's renameat2); False where the system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    return renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def _sibling(target: Path, what: str) -> Path:
    return target.parent / f".{target.name}.{what}-{os.getpid()}"


def _siblings(target: Path, what: str) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.{what}-*"))


def check_data_target(target: Path) -> None:
    """A data folder may replace nothing, an empty folder or another data folder (it has meta.json)."""
    if target.exists() and not target.is_dir():
        raise PicolmError("exists and is not a directory", path=target)
    if target.is_dir() and not (target / "meta.json").is_file() and any(target.iterdir()):
        raise PicolmError("holds files but is not a picolm data folder (no meta.json); refusing to replace it: "
                          "choose a new or empty --out", path=target)


def _recover(target: Path) -> None:
    """Undo what a `prepare` killed midway left (we hold the lock, so none is running): its half-built folder, and
    an old folder moved aside by the two-rename fallback whose new folder never arrived."""
    for partial in _siblings(target, "partial"):
        shutil.rmtree(partial, ignore_errors=True)
    for old in _siblings(target, "old"):
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(target)


def _replace(staging: Path, target: Path) -> None:
    if not target.exists():
        staging.rename(target)
    elif _exchange(staging, target):
        shutil.rmtree(staging)  # the old folder, now under the staging name
    else:  # two renames; `_recover` puts the old folder back if a kill falls between them
        old = _sibling(target, "old")
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)


@contextmanager
def new_folder(target: str | Path, check=check_data_target):
    """Yield an empty folder beside `target` to write into; on success it replaces `target` in one rename. `check`
    refuses a target that may not be replaced. Holds `target`'s lock throughout, so two processes never write one
    folder."""
    target = Path(target)
    check(target)
    with lock_beside(target):
        _recover(target)
        check(target)
        staging = _sibling(target, "partial")
        try:
            staging.mkdir()
            yield staging
            _replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def new_data_folder(target: str | Path):
    """`new_folder` for `prepare`: it replaces an earlier data folder, never a folder of the user's files."""
    return new_folder(target, check_data_target)
