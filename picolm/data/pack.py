"""`picolm prepare`: records -> splits -> tokenizer -> train/val/test token files + meta.json.

Token files carry a self-describing header (as llm.c's do): 256 int32 holding a magic number, the
format version, the bytes per token and the token count, then the tokens as uint16 or uint32.
Numeric data also gets `<split>.kind.bin`: one uint8 per token, the sequence kind it belongs to.
Web sources and large files take the streamed path instead (`picolm/data/stream.py`): train shards, no corpus in
memory.
"""

from __future__ import annotations

import json
import os
import random
import time
from itertools import chain
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from picolm.data.records import write_records
from picolm.data.sources import HUB_SOURCES, SourceData, load_source
from picolm.data.synthetic import NumericSpec
from picolm.errors import PicolmError
from picolm.tokenizer import (Tokenizer, char_tokenizer, gpt2_tokenizer, hub_tokenizer, numeric_tokenizer,
                              train_bpe)

MAGIC = 0x7069636F  # "pico"
VERSION = 1
HEADER_INTS = 256
SPLITS = ("train", "val", "test")
ENCODE_BATCH = 4096
WRITE_BUFFER = 1 << 20  # bytes a TokenWriter gathers before each write to disk
VOCAB_SIZE, WEB_VOCAB_SIZE = 4096, 32_768  # default BPE vocabularies: small corpora, web sources


@dataclass
class PrepareOptions:
    source: str
    out: str
    tokenizer: str | None = None  # bpe | char | numeric | gpt2 | hf:NAME_OR_PATH; default by source
    vocab_size: int | None = None  # default: WEB_VOCAB_SIZE for the web sources, else VOCAB_SIZE
    limit: int | None = None
    subset_ratio: float | None = None
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    use_source_splits: bool = True
    seed: int = 0
    num_sequences: int | None = None
    min_length: int | None = None
    max_length: int | None = None
    max_value: int | None = None
    hub_dir: str | None = None
    skip_bad_rows: bool = False
    stream: bool | None = None  # None: stream the web sources (openwebtext, fineweb), load anything else whole
    shard_tokens: int = 100_000_000  # streamed: tokens per train shard (200 MB as uint16)
    tokenizer_sample_mb: float = 64.0  # streamed: the BPE learns from the first this many MB of train documents
    workers: int | None = None  # streamed: encoding processes (default one per core); 0 encodes in this process


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


def split_records(data: SourceData, options: PrepareOptions) -> dict[str, list[dict]]:
    """The source's own splits when it has them (val and test carved from one another if needed), else ratios."""
    if options.use_source_splits and "train" in data.splits:
        train, val, test = data.splits["train"], data.splits.get("validation", []), data.splits.get("test")
        if test is None:
            half = len(val) // 2
            val, test = val[:half], val[half:]
        return {"train": train, "val": val, "test": test}
    records = [r for split in data.splits.values() for r in split]
    random.Random(options.seed).shuffle(records)
    ratios = check_ratios(options.split_ratios)
    n_val, n_test = (max(1, round(len(records) * r)) if r > 0 else 0 for r in ratios[1:])
    if n_val + n_test >= len(records):
        raise PicolmError(f"only {len(records)} documents: too few to split {ratios}", field="--split-ratios")
    return {"val": records[:n_val], "test": records[n_val:n_val + n_test], "train": records[n_val + n_test:]}


def check_ratios(ratios: tuple[float, float, float]) -> tuple[float, float, float]:
    if any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise PicolmError(f"split ratios {ratios} must be non-negative and sum to 1", field="--split-ratios")
    return ratios


def subset(records: list[dict], options: PrepareOptions) -> list[dict]:
    if options.subset_ratio is not None:
        records = records[:max(1, int(len(records) * options.subset_ratio))]
    if options.limit is not None:
        records = records[:options.limit]
    return records


def build_tokenizer(kind: str, splits: dict[str, list[dict]], options: PrepareOptions) -> Tokenizer:
    """BPE learns from the train split only; symbol vocabularies cover every symbol in any split."""
    if kind == "bpe":
        return train_bpe((r["text"] for r in splits["train"]), options.vocab_size)
    if kind == "gpt2":
        return gpt2_tokenizer()
    if kind.startswith("hf:"):
        return hub_tokenizer(kind[3:])
    every = [r for records in splits.values() for r in records]
    if kind == "char":
        return char_tokenizer(r["text"] for r in every)
    if kind == "numeric":
        try:
            values = [int(v) for r in every for v in r["text"].split()]
        except ValueError as exc:
            raise PicolmError(f"the numeric tokenizer reads whitespace-separated integers ({exc})",
                              field="--tokenizer") from None
        return numeric_tokenizer(max(options.max_value or NumericSpec.max_value, max(values)))
    raise PicolmError(f"unknown tokenizer {kind!r} (bpe, char, numeric, gpt2, hf:NAME_OR_PATH)",
                      field="--tokenizer")


def token_dtype(tokenizer: Tokenizer) -> type:
    return np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32


def encode_split(tokenizer: Tokenizer, records: list[dict], kinds: list[str] | None, threads: int | None = None):
    """Token ids with EOS after each document, and the per-token kind ids when records have kinds."""
    dtype = token_dtype(tokenizer)
    pieces, kind_pieces = [], []
    for start in range(0, len(records), ENCODE_BATCH):
        batch = records[start:start + ENCODE_BATCH]
        encoded = tokenizer.encode_batch([r["text"] for r in batch], threads)
        for ids in encoded:
            ids.append(tokenizer.eos_id)
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        pieces.append(np.fromiter(chain.from_iterable(encoded), dtype=dtype, count=int(lengths.sum())))
        if kinds is not None:
            doc_kinds = np.array([kinds.index(r["kind"]) for r in batch], dtype=np.uint8)
            kind_pieces.append(np.repeat(doc_kinds, lengths))
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
    return tokens, (np.concatenate(kind_pieces) if kinds is not None else None)


def default_tokenizer(source: str) -> str:
    return "numeric" if source == "numeric" else "bpe"


def with_defaults(options: PrepareOptions) -> PrepareOptions:
    """The options with source-dependent defaults filled in and the streaming settings checked."""
    web = options.source in HUB_SOURCES and HUB_SOURCES[options.source].streaming
    workers = (os.cpu_count() or 1) if options.workers is None else options.workers
    for name, value, least in (("--shard-tokens", options.shard_tokens, 1), ("--workers", workers, 0)):
        if value < least:
            raise PicolmError(f"must be at least {least}, got {value}", field=name)
    if options.tokenizer_sample_mb <= 0:
        raise PicolmError(f"must be positive, got {options.tokenizer_sample_mb}", field="--tokenizer-sample-mb")
    return replace(options, vocab_size=options.vocab_size or (WEB_VOCAB_SIZE if web else VOCAB_SIZE),
                   stream=web if options.stream is None else options.stream, workers=workers)


def prepare(options: PrepareOptions, log=print) -> dict:
    """Write a data directory; returns its meta.json contents."""
    started = time.perf_counter()
    options = with_defaults(options)
    if options.stream:
        from picolm.data.stream import prepare_stream

        return prepare_stream(options, log)
    out = Path(options.out)
    source_options = {"num_sequences": options.num_sequences, "min_length": options.min_length,
                      "max_length": options.max_length, "max_value": options.max_value, "seed": options.seed}
    data = load_source(options.source, source_options, hub_dir=options.hub_dir, limit=options.limit,
                       skip_bad_rows=options.skip_bad_rows)
    data.splits = {name: subset(records, options) for name, records in data.splits.items()}
    splits = split_records(data, options)
    empty = [name for name in SPLITS if not splits[name]]
    if empty:
        raise PicolmError(f"the {'/'.join(empty)} split is empty; use more data or other --split-ratios",
                          field=options.source)
    if data.task != "text":
        return write_example_splits(out, splits, data.task, options, started, log)
    kind = options.tokenizer or default_tokenizer(options.source)
    tokenizer = build_tokenizer(kind, splits, options)
    kinds = sorted({r["kind"] for records in splits.values() for r in records}) if data.has_kinds else None
    if out.exists() and not out.is_dir():
        raise PicolmError("exists and is not a directory", path=out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out / "tokenizer")
    counts = {}
    encode_seconds = 0.0
    for name in SPLITS:
        t0 = time.perf_counter()
        tokens, kind_ids = encode_split(tokenizer, splits[name], kinds)
        encode_seconds += time.perf_counter() - t0
        write_tokens(out / f"{name}.bin", tokens)
        kind_path = out / f"{name}.kind.bin"
        if kind_ids is not None:
            write_tokens(kind_path, kind_ids)
        else:
            kind_path.unlink(missing_ok=True)  # left by an earlier prepare into the same folder
        counts[name] = {"documents": len(splits[name]), "tokens": int(len(tokens))}
        log(f"{name}: {len(splits[name]):,} documents, {len(tokens):,} tokens")
    own_splits = "train" in data.splits and options.use_source_splits
    meta = text_meta(options, kind, tokenizer, counts, kinds, encode_seconds, started, own_splits=own_splits)
    write_meta(out, meta)
    return meta


def text_meta(options: PrepareOptions, kind: str, tokenizer: Tokenizer, counts: dict, kinds: list[str] | None,
              encode_seconds: float, started: float, own_splits: bool = False) -> dict:
    """meta.json of a token data directory."""
    return {
        "source": options.source,
        "task": "text",
        "hub_repo": HUB_SOURCES[options.source].repo if options.source in HUB_SOURCES else None,
        "tokenizer": kind,
        "vocab_size": tokenizer.vocab_size,
        "dtype": token_dtype(tokenizer).__name__,
        "eos_id": tokenizer.eos_id,
        "splits": counts,
        "split_ratios": None if own_splits else list(options.split_ratios),
        "seed": options.seed,
        "kinds": kinds,
        "options": {k: v for k, v in asdict(options).items() if k not in ("out",)},
        "encode_tokens_per_second": round(sum(c["tokens"] for c in counts.values()) / max(encode_seconds, 1e-9)),
        "seconds": round(time.perf_counter() - started, 2),
    }


def write_meta(out: Path, meta: dict) -> None:
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    os.replace(tmp, out / "meta.json")  # written last: a directory with meta.json is complete


def write_example_splits(out: Path, splits: dict[str, list[dict]], task: str, options: PrepareOptions,
                         started: float, log=print) -> dict:
    """SFT or preference records as `<split>.jsonl`: they are tokenized when training starts, with the tokenizer
    of the model being fine-tuned. `--tokenizer` adds one for training from scratch."""
    if out.exists() and not out.is_dir():
        raise PicolmError("exists and is not a directory", path=out)
    out.mkdir(parents=True, exist_ok=True)
    if options.tokenizer:
        texts = {name: [{"text": r["prompt"] + " " + " ".join(r[k] for k in ("response", "chosen", "rejected")
                                                                if k in r)} for r in records]
                 for name, records in splits.items()}
        build_tokenizer(options.tokenizer, texts, options).save(out / "tokenizer")
    counts = {}
    for name in SPLITS:
        write_records(out / f"{name}.jsonl", splits[name])
        counts[name] = {"examples": len(splits[name])}
        log(f"{name}: {len(splits[name]):,} {'pairs' if task == 'dpo' else 'examples'}")
    meta = {"source": options.source, "task": task, "tokenizer": options.tokenizer, "splits": counts,
            "seed": options.seed, "options": {k: v for k, v in asdict(options).items() if k != "out"},
            "seconds": round(time.perf_counter() - started, 2)}
    write_meta(out, meta)
    return meta


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
