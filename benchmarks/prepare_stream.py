"""Web-scale data preparation: the streamed, parallel, sharded `picolm prepare` (a 32k BPE trained on a sample)
on generated corpora of growing size, in tokens/s, MB/s and the peak memory of the preparing process tree, against
the in-memory `picolm prepare` (the same 32k BPE, trained on the whole train split) on the same corpus. With
--encoders-mb, also the encoding pass alone in alternating rounds: worker processes against the main process, each
encoding with a plain loop or on tiktoken's thread pool (what chose the `--workers` default).

    python benchmarks/prepare_stream.py --sizes 100,1000 --peer-sizes 100 --workers 2
    python benchmarks/prepare_stream.py --sizes "" --encoders-mb 200

The corpus is JSON Lines {"text"} under --tmp, deleted afterwards: documents of 3-40 sentences drawn from the
built-in story generator, about one word in eight swapped for a word of a 60,000-word Zipf-distributed lexicon so
that a 32k BPE has a vocabulary to learn. Each preparation runs as a child process (`python -m picolm prepare`);
its memory is the sum of the resident sets of it and its workers, sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import median
from picolm.data.stories import generate_stories

SENTENCE_END = re.compile(r"(?<=[.!?\"])\s+")
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "sh", "ch", "qu", "ar", "er", "on"]
POLL_SECONDS = 0.05


def sentence_pool(seed: int, stories: int = 4000, lexicon_size: int = 60_000) -> list[str]:
    """Story sentences, each in five variants with a few words swapped for lexicon words (rank r drawn with
    probability about 1/r, as word frequencies in text fall)."""
    rng = random.Random(seed)
    lexicon = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(lexicon_size)]
    sentences = [s for story in generate_stories(stories, seed=seed) for s in SENTENCE_END.split(story)]
    pool = []
    for sentence in sentences * 5:
        words = sentence.split(" ")
        for _ in range(rng.randint(0, 3)):
            words[rng.randrange(len(words))] = lexicon[int(lexicon_size ** rng.random()) - 1]
        pool.append(" ".join(words))
    return pool


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> tuple[int, int]:
    """A JSON Lines corpus of about `megabytes` MB of text; returns (documents, text bytes)."""
    pool = sentence_pool(seed)
    rng = np.random.default_rng(seed)
    documents = size = 0
    with path.open("w", encoding="utf-8") as f:
        while size < megabytes * 1e6:
            picks = rng.integers(0, len(pool), rng.integers(3, 41))
            breaks = rng.random(len(picks)) < 0.15  # some sentences start a paragraph
            text = "".join(("\n\n" if b and i else " " if i else "") + pool[p]
                           for i, (p, b) in enumerate(zip(picks, breaks)))
            f.write(json.dumps({"text": text}) + "\n")
            documents += 1
            size += len(text.encode())
    return documents, size


def process_tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += parents.get(pid, [])
    return tree


def resident_bytes(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match[1]) * 1024 if match else 0


def run_measured(command: list[str]) -> tuple[float, int]:
    """Wall seconds and the peak of the summed resident memory of the command's process tree."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while child.poll() is None:
        peak = max(peak, sum(resident_bytes(pid) for pid in process_tree(child.pid)))
        time.sleep(POLL_SECONDS)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{child.stderr.read()}")
    return seconds, peak


def prepare_row(label: str, corpus: Path, text_bytes: int, out: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "picolm", "prepare", "--source", str(corpus), "--out", str(out),
               "--vocab-size", "32768", *extra]
    seconds, peak = run_measured(command)
    meta = json.loads((out / "meta.json").read_text())
    tokens = sum(split["tokens"] for split in meta["splits"].values())
    shutil.rmtree(out)
    return {"corpus_mb": text_bytes / 1e6, "path": label, "tokens": tokens, "seconds": seconds,
            "tokens_per_second": tokens / seconds, "mb_per_second": text_bytes / 1e6 / seconds,
            "encode_tokens_per_second": meta["encode_tokens_per_second"], "peak_rss_mb": peak / 2**20,
            "shards": len(meta.get("shards", [])), "vocab_size": meta["vocab_size"]}


def compare_encoders(work: Path, megabytes: float, rounds: int) -> None:
    """Encoding-pass tokens/s of worker processes and of the main process, one thread each or a thread pool."""
    from itertools import islice

    from picolm.data.sources import stream_source
    from picolm.data.stream import BatchEncoder, ShardWriter, encoded_batches, text_batches
    from picolm.tokenizer import train_bpe

    corpus = work / "encoders.jsonl"
    write_corpus(corpus, megabytes)
    tokenizer = train_bpe(islice(stream_source(str(corpus)), 20_000), 32_768)
    contenders = {"2 workers, plain loop": (2, 1), "main process, plain loop": (0, 1),
                  "main process, tiktoken thread pool": (0, None), "2 workers, tiktoken thread pool": (2, None)}
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (workers, threads) in contenders.items():
            encoder = BatchEncoder(tokenizer, 0, (0.8, 0.1, 0.1), threads)
            started, count = time.perf_counter(), 0
            with ShardWriter(work, 10**9, np.uint16, log=lambda *_: None) as writer:
                for tokens, _, _ in encoded_batches(text_batches(stream_source(str(corpus))), encoder, workers):
                    for array in tokens.values():
                        writer.write(array)
                        count += len(array)
            rates[name].append(count / (time.perf_counter() - started))
            print(f"{name}: {rates[name][-1]:,.0f} tokens/s", flush=True)
    print(f"\nencoding pass, {megabytes:g} MB, median of {rounds} alternating rounds:")
    for name, values in rates.items():
        print(f"  {name}: {median(values):,.0f} tokens/s")
    corpus.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000", help="corpus sizes in MB")
    parser.add_argument("--peer-sizes", default="100", help="sizes at which the in-memory prepare also runs")
    parser.add_argument("--workers", default="0,2", help="streamed: --workers values to run, comma-separated")
    parser.add_argument("--tmp", default="/tmp", help="where the corpora and data directories are written")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--encoders-mb", type=float, default=0, help="compare encoders on a corpus this large")
    parser.add_argument("--rounds", type=int, default=2, help="encoder comparison: alternating rounds")
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",") if s]
    peer_sizes = {float(s) for s in args.peer_sizes.split(",") if s}
    work = Path(args.tmp) / f"picolm-prepare-stream-{os.getpid()}"
    work.mkdir(parents=True)
    rows = []
    try:
        for size in sizes:
            corpus = work / f"corpus-{size:g}mb.jsonl"
            started = time.perf_counter()
            documents, text_bytes = write_corpus(corpus, size)
            print(f"{size:g} MB corpus: {documents:,} documents, {text_bytes / 1e6:,.0f} MB of text, generated in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
            for workers in args.workers.split(","):
                rows.append(prepare_row(f"streamed, {workers} workers", corpus, text_bytes, work / "data",
                                        ["--stream", "--workers", workers]))
                print(rows[-1], flush=True)
            if size in peer_sizes:
                rows.append(prepare_row("in-memory", corpus, text_bytes, work / "data", ["--no-stream"]))
                print(rows[-1], flush=True)
            corpus.unlink()
        if args.encoders_mb:
            compare_encoders(work, args.encoders_mb, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not rows:
        return
    print(f"\n{os.cpu_count()} cores; BPE vocabulary 32,768 (streamed: trained on the first 64 MB of train text)\n")
    print("| corpus | path | tokens | wall s | tokens/s | MB/s | encoding tokens/s | peak RSS (tree) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['corpus_mb']:,.0f} MB | {r['path']} | {r['tokens']:,} | {r['seconds']:.0f} | "
              f"{r['tokens_per_second']:,.0f} | {r['mb_per_second']:.2f} | {r['encode_tokens_per_second']:,} | "
              f"{r['peak_rss_mb']:,.0f} MB |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
