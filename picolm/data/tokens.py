"""Token files and data-directory metadata: the format every later stage reads.

A token file carries a self-describing header (as llm.c's do): 256 int32 holding a magic number, the format
version, the bytes per token and the token count, then the tokens as uint16 or uint32. Numeric data also gets
`<split>.kind.bin`: one uint8 per token, the sequence kind it belongs to. `meta.json`, written last, says what a
data directory holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from picolm.errors import PicolmError
from picolm.files import write_text_atomically
from picolm.tokenizer import Tokenizer

MAGIC = 0x7069636F  # "pico"
VERSION = 1
HEADER_INTS = 256
WRITE_BUFFER = 1 << 20  # bytes a TokenWriter gathers before each write to disk


def _header(itemsize: int, count: int) -> bytes:
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:5] = [MAGIC, VERSION, itemsize, count & 0xFFFFFFFF, count >> 32]
    return header.tobytes()


class TokenWriter:
    """Appends token arrays to a token file through a buffer, so no split needs to be held whole. The header
    is a placeholder until `close` seeks back to write the count; until then the file is `<name>.tmp`, so a
    crash never leaves a torn token file. As a context manager it closes, or discards the file on an error."""

    def __init__(self, path: Path, dtype):
        self.path, self.dtype, self.count = Path(path), np.dtype(dtype), 0
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = self._tmp.open("wb", buffering=WRITE_BUFFER)
        self._file.write(_header(self.dtype.itemsize, 0))

    def write(self, tokens: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(tokens, dtype=self.dtype).data)
        self.count += len(tokens)

    def close(self) -> None:
        self._file.seek(0)
        self._file.write(_header(self.dtype.itemsize, self.count))
        self._file.close()
        os.replace(self._tmp, self.path)

    def discard(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> TokenWriter:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()


def write_tokens(path: Path, tokens: np.ndarray) -> None:
    with TokenWriter(path, tokens.dtype) as writer:
        writer.write(tokens)


def read_tokens(path: str | Path) -> np.ndarray:
    """A read-only memmap of a token file written by `write_tokens`."""
    path = Path(path)
    try:
        header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    except FileNotFoundError:
        raise PicolmError("no such token file (run `picolm prepare` first)", path=path) from None
    if len(header) < HEADER_INTS or header[0] != MAGIC:
        raise PicolmError("not a picolm token file (bad header)", path=path)
    if header[1] != VERSION:
        raise PicolmError(f"token file version {header[1]} is not supported (expected {VERSION})", path=path)
    dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32}.get(int(header[2]))
    if dtype is None:
        raise PicolmError(f"bad header: {header[2]} bytes per token", path=path)
    count = int(np.uint32(header[3])) | (int(header[4]) << 32)
    if path.stat().st_size < HEADER_INTS * 4 + count * np.dtype(dtype).itemsize:
        raise PicolmError(f"truncated: the header promises {count:,} tokens", path=path)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_INTS * 4, shape=(count,))


def token_dtype(tokenizer: Tokenizer) -> type:
    return np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32


def write_meta(out: Path, meta: dict) -> None:
    write_text_atomically(out / "meta.json", json.dumps(meta, indent=1))  # written last: a folder with it is complete


def load_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "meta.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not Path(data_dir).is_dir():
            raise PicolmError("no such data directory", path=data_dir) from None
        raise PicolmError("not a data directory written by `picolm prepare` (no meta.json)", path=path) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PicolmError(f"unreadable ({exc})", path=path) from None


def data_fingerprint(data_dir: str | Path) -> str | None:
    """The fingerprint of the tokenizer that made a data folder's tokens: meta.json's, else (a folder prepared before
    fingerprints) its tokenizer/'s; None for example data, which the model's tokenizer encodes when it is read."""
    from picolm.tokenizer import load_tokenizer

    data_dir = Path(data_dir)
    meta = load_meta(data_dir)
    if meta.get("tokenizer_fingerprint"):
        return meta["tokenizer_fingerprint"]
    if meta.get("task", "text") == "text" and (data_dir / "tokenizer").is_dir():
        return load_tokenizer(data_dir / "tokenizer").fingerprint
    return None


def check_tokenizer(data_dir: str | Path, tokenizer: Tokenizer) -> None:
    """Refuse token data made by another tokenizer than the model's: its ids would mean other tokens."""
    theirs = data_fingerprint(data_dir)
    if theirs is not None and theirs != tokenizer.fingerprint:
        raise PicolmError(f"its tokens were made by another tokenizer (fingerprint {theirs}) than the model's "
                          f"({tokenizer.kind}, fingerprint {tokenizer.fingerprint}); prepare the data with the "
                          "model's tokenizer (a BPE run's: picolm prepare --tokenizer hf:RUN/tokenizer)", path=data_dir)


def load_split(data_dir: str | Path, split: str, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray | None]:
    """A split's tokens and, for numeric data, the sequence kind of each token; refused if `tokenizer` did not
    make them."""
    check_tokenizer(data_dir, tokenizer)
    data_dir = Path(data_dir)
    kind_path = data_dir / f"{split}.kind.bin"
    return read_tokens(data_dir / f"{split}.bin"), (np.asarray(read_tokens(kind_path)) if kind_path.exists() else None)
