"""What in-memory and streamed preparation share: the options, the tokenizer choice, encoding and meta.json."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from itertools import chain

import numpy as np

from picolm.data.sources import HF_PREFIX, PAIRS_PREFIX, hub_source
from picolm.data.synthetic import NumericSpec
from picolm.data.tokens import token_dtype
from picolm.errors import PicolmError
from picolm.tokenizer import Tokenizer, char_tokenizer, gpt2_tokenizer, hub_tokenizer, numeric_tokenizer, train_bpe

SPLITS = ("train", "val", "test")
ENCODE_BATCH = 4096
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
    field: str | None = None  # hf:NAME sources: the text column (default: the layout its columns show)
    skip_bad_rows: bool = False
    stream: bool | None = None  # None: stream the web sources (openwebtext, fineweb), load anything else whole
    shard_tokens: int = 100_000_000  # streamed: tokens per train shard (200 MB as uint16)
    tokenizer_sample_mb: float = 64.0  # streamed: the BPE learns from the first this many MB of train documents
    workers: int | None = None  # streamed: encoding processes (default one per core); 0 encodes in this process


def check_ratios(ratios: tuple[float, float, float]) -> tuple[float, float, float]:
    if any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise PicolmError(f"split ratios {ratios} must be non-negative and sum to 1", field="--split-ratios")
    return ratios


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
    source = hub_source(options.source)
    web = source is not None and source.streaming
    if options.field is not None and not options.source.removeprefix(PAIRS_PREFIX).startswith(HF_PREFIX):
        raise PicolmError(f"names the text column of an {HF_PREFIX}NAME source; a local file names its own as "
                          "PATH.jsonl:FIELD, and the named sources know theirs", field="--field")
    workers = (os.cpu_count() or 1) if options.workers is None else options.workers
    for name, value, least in (("--shard-tokens", options.shard_tokens, 1), ("--workers", workers, 0)):
        if value < least:
            raise PicolmError(f"must be at least {least}, got {value}", field=name)
    if options.tokenizer_sample_mb <= 0:
        raise PicolmError(f"must be positive, got {options.tokenizer_sample_mb}", field="--tokenizer-sample-mb")
    return replace(options, vocab_size=options.vocab_size or (WEB_VOCAB_SIZE if web else VOCAB_SIZE),
                   stream=web if options.stream is None else options.stream, workers=workers)


def text_meta(options: PrepareOptions, kind: str, tokenizer: Tokenizer, counts: dict, kinds: list[str] | None,
              encode_seconds: float, started: float, own_splits: bool = False) -> dict:
    """meta.json of a token data directory."""
    return {
        "source": options.source,
        "task": "text",
        "hub_repo": source.repo if (source := hub_source(options.source)) is not None else None,
        "tokenizer": kind,
        "tokenizer_fingerprint": tokenizer.fingerprint,
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
