"""One writer per run or data folder: an OS lock (`flock`) that the kernel releases when its holder exits, even by
kill -9, so a crashed writer never leaves a folder locked. The holder's PID is written into the lock file for the
message a second writer gets; the holder removes the file when it is done."""

from __future__ import annotations

import os
from pathlib import Path

from picolm.errors import PicolmError

try:
    import fcntl
except ImportError:  # Windows: msvcrt's byte-range lock does the same job
    fcntl = None
    import msvcrt

LOCK_FILE = ".picolm.lock"
DEFAULT_ADVICE = "wait for it to finish or choose another --out"
_HELD: dict[Path, FolderLock] = {}  # the locks this process holds, by lock file


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _still_there(fd: int, path: Path) -> bool:
    """Whether `path` is still the file `fd` locked: a holder that finished removed it, and the lock then guards
    nothing (try again with the path's new file)."""
    try:
        mine, now = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="utf-8").strip()
    except OSError:
        pid = ""
    return f"PID {pid}" if pid.isdigit() else "another process"


class FolderLock:
    """Hold `lock_path` from `acquire` to `release`; if another process holds it, exit 2 naming `what` and the
    holder. Also a context manager."""

    def __init__(self, lock_path: Path, what: Path, advice: str):
        self.path, self.what, self.advice, self._fd = Path(lock_path), Path(what), advice, None
        self.created_folder = False

    def acquire(self) -> FolderLock:
        """A lock this process already holds passes to this holder (a notebook or a test resuming a run while the
        first trainer object still exists); the OS lock keeps out other processes."""
        earlier = _HELD.get(self.path.resolve())
        if earlier is not None and earlier._fd is not None:
            self._fd, earlier._fd = earlier._fd, None
            self.created_folder = earlier.created_folder
            _HELD[self.path.resolve()] = self
            return self
        self.created_folder = not self.path.parent.exists()
        while self._fd is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise PicolmError(f"cannot create the folder or its lock file ({exc.strerror})", path=self.what) \
                    from None
            if not _try_lock(fd):
                os.close(fd)
                raise PicolmError(f"in use by {_holder(self.path)} (one writer at a time); {self.advice}",
                                  path=self.what)
            if _still_there(fd, self.path):
                self._fd = fd
            else:
                os.close(fd)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())
        _HELD[self.path.resolve()] = self
        return self

    def release(self, discard_unused: bool = False) -> None:
        """Remove the lock file, then close it, which releases the lock. `discard_unused`: a folder this lock
        created that is now empty is removed too (a run that failed before writing anything leaves no folder)."""
        if self._fd is None:
            return
        _HELD.pop(self.path.resolve(), None)
        try:
            self.path.unlink(missing_ok=True)
        except OSError:  # Windows keeps an open file; the next holder reuses it
            pass
        os.close(self._fd)
        self._fd = None
        if discard_unused and self.created_folder:
            try:
                self.path.parent.rmdir()
            except OSError:  # not empty: something was written after all
                pass

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, kind, error, trace) -> None:
        self.release(discard_unused=kind is not None)


def lock_folder(folder: Path, advice: str = DEFAULT_ADVICE) -> FolderLock:
    """The lock of a run or compare folder, kept inside it (the folder is created if needed)."""
    return FolderLock(Path(folder) / LOCK_FILE, Path(folder), advice)


def lock_beside(target: Path, advice: str = DEFAULT_ADVICE) -> FolderLock:
    """The lock of a folder that is replaced by a rename (a data folder): a hidden file beside it."""
    target = Path(target)
    return FolderLock(target.parent / f".{target.name}.lock", target, advice)
