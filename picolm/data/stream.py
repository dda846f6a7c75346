"""Streamed preparation, for corpora larger than memory (the web sources, large local text files).

Documents flow from `stream_source` in batches of about a megabyte to `workers` encoding processes, each with its
own tokenizer (0: the tokenizer's batch call, on threads, in this process), and from them, in order, to buffered
writers: the train tokens into shards of `shard_tokens` tokens (`train-00000.bin`, ...), val and test into single
files. Nothing holds the corpus, so peak memory does not grow with it. A document's split is a keyed hash of its
text: the same at any worker count, order or `--limit`, and exact duplicates never straddle train and val. The BPE
learns from the first `tokenizer_sample_mb` MB of train documents, read in a first pass over the stream.
meta.json, written last, lists the shards and their token counts.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from picolm.data.preparation import SPLITS, PrepareOptions, build_tokenizer, check_ratios, encode_split, text_meta
from picolm.data.sources import stream_source
from picolm.data.tokens import TokenWriter, token_dtype, write_meta
from picolm.errors import PicolmError
from picolm.tokenizer import Tokenizer, tokenizer_from_dict, train_bpe

BATCH_CHARS = 1 << 20  # text per encoding task
IN_FLIGHT = 2  # encoding tasks queued per worker: enough to keep workers busy, few enough to keep memory flat
SHARD_NAME = "train-{:05d}.bin"


def held_out_split(text: str, seed: int, ratios: tuple[float, float, float]) -> str:
    """The split of a document: a hash of its text and the seed, compared with the val and test fractions."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=f"picolm-split-{seed}".encode()).digest()
    draw = int.from_bytes(digest, "big") / 2**64
    return "val" if draw < ratios[1] else "test" if draw < ratios[1] + ratios[2] else "train"


class BatchEncoder:
    """A batch of documents -> for each split, its token array (EOS after each document) and document count,
    and the batch's UTF-8 bytes. Runs here, or in each worker process with its own copy of the tokenizer."""

    def __init__(self, tokenizer: Tokenizer, seed: int, ratios: tuple[float, float, float],
                 threads: int | None = None):
        self.tokenizer, self.seed, self.ratios, self.threads = tokenizer, seed, ratios, threads

    def __call__(self, texts: list[str]) -> tuple[dict[str, np.ndarray], dict[str, int], int]:
        records: dict[str, list[dict]] = {name: [] for name in SPLITS}
        for text in texts:
            records[held_out_split(text, self.seed, self.ratios)].append({"text": text})
        tokens = {name: encode_split(self.tokenizer, docs, None, self.threads)[0] for name, docs in records.items()}
        return tokens, {name: len(docs) for name, docs in records.items()}, sum(len(t.encode()) for t in texts)


_worker: BatchEncoder | None = None


def _start_worker(tokenizer: dict, seed: int, ratios: tuple[float, float, float], threads: int | None) -> None:
    global _worker
    _worker = BatchEncoder(tokenizer_from_dict(tokenizer), seed, ratios, threads)


def _encode_in_worker(texts: list[str]):
    return _worker(texts)


def text_batches(texts: Iterable[str], batch_chars: int = BATCH_CHARS) -> Iterator[list[str]]:
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def encoded_batches(batches: Iterable[list[str]], encoder: BatchEncoder, workers: int) -> Iterator:
    """`encoder` applied to each batch, in order: in `workers` spawned processes (0: here), with at most
    `IN_FLIGHT` batches per worker read ahead."""
    if workers == 0:
        yield from map(encoder, batches)
        return
    # spawn, not fork: the parent has run the tokenizers' thread pool (BPE training), which a fork would inherit
    args = (encoder.tokenizer.to_dict(), encoder.seed, encoder.ratios, encoder.threads)
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_start_worker, initargs=args) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode_in_worker, (batch,)))
            if len(pending) >= IN_FLIGHT * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class ShardWriter:
    """Tokens appended across shard files of exactly `shard_tokens` tokens each (the last holds the rest). As a
    context manager it closes the last shard, or discards it on an error."""

    def __init__(self, out: Path, shard_tokens: int, dtype, log=print):
        self.out, self.shard_tokens, self.dtype, self.log = out, shard_tokens, dtype, log
        self.shards: list[dict] = []
        self.count = 0
        self._writer: TokenWriter | None = None

    def write(self, tokens: np.ndarray) -> None:
        self.count += len(tokens)
        while len(tokens):
            if self._writer is None:
                self._writer = TokenWriter(self.out / SHARD_NAME.format(len(self.shards)), self.dtype)
            room = self.shard_tokens - self._writer.count
            self._writer.write(tokens[:room])
            tokens = tokens[room:]
            if self._writer.count == self.shard_tokens:
                self._close_shard()

    def _close_shard(self) -> None:
        writer, self._writer = self._writer, None
        writer.close()
        self.shards.append({"file": writer.path.name, "tokens": writer.count})
        self.log(f"  {writer.path.name}: {writer.count:,} tokens")

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if self._writer is None:
            return
        if kind is None:
            self._close_shard()
        else:
            self._writer.discard()


def tokenizer_sample(texts: Iterable[str], options: PrepareOptions, stats: dict) -> Iterator[str]:
    """The first `tokenizer_sample_mb` MB of train documents; counts what it yields into `stats`."""
    budget = options.tokenizer_sample_mb * 1e6
    for text in texts:
        if held_out_split(text, options.seed, options.split_ratios) != "train":
            continue
        yield text
        stats["documents"] += 1
        stats["bytes"] += len(text.encode())
        if stats["bytes"] >= budget:
            return


def prepare_stream(options: PrepareOptions, log=print) -> dict:
    """`prepare` for a streamed source into the empty folder `options.out` (options already through `with_defaults`);
    returns meta.json's contents."""
    started = time.perf_counter()
    check_ratios(options.split_ratios)
    if options.subset_ratio is not None:
        raise PicolmError("a stream's length is unknown until its end; use --limit", field="--subset-ratio")
    kind = options.tokenizer or "bpe"
    if kind in ("char", "numeric"):
        raise PicolmError(f"the {kind} vocabulary needs every symbol of the corpus first; stream with bpe, gpt2 "
                          "or hf:NAME_OR_PATH", field="--tokenizer")
    out = Path(options.out)
    texts = stream_source(options.source, options.hub_dir, options.limit, options.field)
    sample = {"documents": 0, "bytes": 0}
    if kind == "bpe":  # a first pass over the stream's start; the second pass below encodes everything
        log(f"training a {options.vocab_size:,}-token BPE on the first {options.tokenizer_sample_mb:g} MB of "
            "train documents")
        tokenizer = train_bpe(tokenizer_sample(texts, options, sample), options.vocab_size)
        texts = stream_source(options.source, options.hub_dir, options.limit, options.field)
    else:
        tokenizer = build_tokenizer(kind, {}, options)
    tokenizer.save(out / "tokenizer")
    dtype = token_dtype(tokenizer)
    encoder = BatchEncoder(tokenizer, options.seed, options.split_ratios, threads=1 if options.workers else None)
    documents, text_bytes = dict.fromkeys(SPLITS, 0), 0
    where = f"{options.workers} worker processes" if options.workers else "this process"
    log(f"encoding in {where}; train shards of {options.shard_tokens:,} tokens")
    encode_started = time.perf_counter()
    with ShardWriter(out, options.shard_tokens, dtype, log) as train, TokenWriter(out / "val.bin", dtype) as val, \
            TokenWriter(out / "test.bin", dtype) as test:
        writers = {"train": train, "val": val, "test": test}
        for tokens, counts, size in encoded_batches(text_batches(texts), encoder, options.workers):
            for name, writer in writers.items():
                writer.write(tokens[name])
                documents[name] += counts[name]
            text_bytes += size
    encode_seconds = time.perf_counter() - encode_started
    counts = {name: {"documents": documents[name], "tokens": writers[name].count} for name in SPLITS}
    for name in SPLITS:
        log(f"{name}: {documents[name]:,} documents, {writers[name].count:,} tokens"
            + (f" in {len(train.shards)} shard(s)" if name == "train" else ""))
    empty = [name for name in SPLITS if not documents[name]]
    if empty:
        raise PicolmError(f"the {'/'.join(empty)} split is empty; use more data or other --split-ratios",
                          field=options.source)
    meta = {**text_meta(options, kind, tokenizer, counts, None, encode_seconds, started),
            "shards": train.shards, "text_bytes": text_bytes,
            "tokenizer_sample": sample if kind == "bpe" else None}
    write_meta(out, meta)
    return meta
