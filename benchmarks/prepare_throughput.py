"""Data preparation: BPE encoding of the built-in story corpus into a token array, in tokens/s, against
the `tokenizers` library's fastest parallel call (`encode_batch_fast`, ids only) on the same tokenizer and
texts, in one run.

    python benchmarks/prepare_throughput.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os

from common import interleaved, median
from picolm.data.preparation import encode_split
from picolm.data.stories import generate_stories
from picolm.tokenizer import train_bpe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args()
    texts = generate_stories()
    tokenizer = train_bpe(texts[:2000], args.vocab_size)
    records = [{"text": t} for t in texts]
    count = len(encode_split(tokenizer, records, None)[0])
    times = interleaved({
        "picolm": lambda: encode_split(tokenizer, records, None),
        "tokenizers": lambda: tokenizer.tok.encode_batch_fast(texts, add_special_tokens=False),
    }, rounds=args.rounds, repeats=1)
    ours, peer = count / median(times["picolm"]), count / median(times["tokenizers"])
    print(f"{len(texts):,} stories, {count:,} tokens, {os.cpu_count()} cores, vocab {args.vocab_size}")
    print(f"picolm encode_split {ours:,.0f} tokens/s; tokenizers encode_batch_fast {peer:,.0f} tokens/s; "
          f"ratio {ours / peer:.2f}x")


if __name__ == "__main__":
    main()
