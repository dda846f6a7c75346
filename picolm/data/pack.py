"""`picolm prepare`: records -> splits -> tokenizer -> train/val/test token files + meta.json, in memory.

Web sources and large files take the streamed path instead (`picolm/data/stream.py`): train shards, no corpus in
memory. The token-file format is `picolm/data/tokens.py`'s.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, replace
from pathlib import Path

from picolm.data.folder import new_data_folder
from picolm.data.preparation import (SPLITS, PrepareOptions, build_tokenizer, check_ratios, default_tokenizer,
                                     encode_split, text_meta, with_defaults)
from picolm.data.records import write_records
from picolm.data.sources import SourceData, load_source
from picolm.data.tokens import write_meta, write_tokens
from picolm.errors import PicolmError


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


def subset(records: list[dict], options: PrepareOptions) -> list[dict]:
    if options.subset_ratio is not None:
        records = records[:max(1, int(len(records) * options.subset_ratio))]
    if options.limit is not None:
        records = records[:options.limit]
    return records


def prepare(options: PrepareOptions, log=print) -> dict:
    """Write a data directory (built beside --out, then renamed into place); returns its meta.json contents."""
    options = with_defaults(options)
    with new_data_folder(options.out) as staging:
        if options.stream:
            from picolm.data.stream import prepare_stream

            return prepare_stream(replace(options, out=str(staging)), log)
        return prepare_in_memory(replace(options, out=str(staging)), log)


def prepare_in_memory(options: PrepareOptions, log=print) -> dict:
    """`prepare` for a source held in memory, into the empty folder `options.out`."""
    started = time.perf_counter()
    out = Path(options.out)
    source_options = {"num_sequences": options.num_sequences, "min_length": options.min_length,
                      "max_length": options.max_length, "max_value": options.max_value, "seed": options.seed,
                      "text_field": options.field}
    data = load_source(options.source, source_options, hub_dir=options.hub_dir, limit=options.limit,
                       skip_bad_rows=options.skip_bad_rows, use_source_splits=options.use_source_splits)
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
    tokenizer.save(out / "tokenizer")
    counts = {}
    encode_seconds = 0.0
    for name in SPLITS:
        t0 = time.perf_counter()
        tokens, kind_ids = encode_split(tokenizer, splits[name], kinds)
        encode_seconds += time.perf_counter() - t0
        write_tokens(out / f"{name}.bin", tokens)
        if kind_ids is not None:
            write_tokens(out / f"{name}.kind.bin", kind_ids)
        counts[name] = {"documents": len(splits[name]), "tokens": int(len(tokens))}
        log(f"{name}: {len(splits[name]):,} documents, {len(tokens):,} tokens")
    own_splits = "train" in data.splits and options.use_source_splits
    meta = text_meta(options, kind, tokenizer, counts, kinds, encode_seconds, started, own_splits=own_splits)
    write_meta(out, meta)
    return meta


def write_example_splits(out: Path, splits: dict[str, list[dict]], task: str, options: PrepareOptions,
                         started: float, log=print) -> dict:
    """SFT or preference records as `<split>.jsonl`: they are tokenized when training starts, with the tokenizer
    of the model being fine-tuned. `--tokenizer` adds one for training from scratch."""
    fingerprint = None
    if options.tokenizer:
        texts = {name: [{"text": r["prompt"] + " " + " ".join(r[k] for k in ("response", "chosen", "rejected")
                                                                if k in r)} for r in records]
                 for name, records in splits.items()}
        tokenizer = build_tokenizer(options.tokenizer, texts, options)
        tokenizer.save(out / "tokenizer")
        fingerprint = tokenizer.fingerprint
    counts = {}
    for name in SPLITS:
        write_records(out / f"{name}.jsonl", splits[name])
        counts[name] = {"examples": len(splits[name])}
        log(f"{name}: {len(splits[name]):,} {'pairs' if task == 'dpo' else 'examples'}")
    meta = {"source": options.source, "task": task, "tokenizer": options.tokenizer,
            "tokenizer_fingerprint": fingerprint, "splits": counts,
            "seed": options.seed, "options": {k: v for k, v in asdict(options).items() if k != "out"},
            "seconds": round(time.perf_counter() - started, 2)}
    write_meta(out, meta)
    return meta


