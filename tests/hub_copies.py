"""Tiny local copies of three hub datasets, written as the hub holds them, for `picolm prepare --hub-dir` offline.

`write_hub_copies(root, rows)` writes, under `root`:

    tinystories/data/train-00000-of-00001.parquet         text                      (roneneldan/TinyStories)
    tinystories/data/validation-00000-of-00001.parquet    text
    alpaca/data/train-00000-of-00001.parquet              instruction, input, output, text   (tatsu-lab/alpaca)
    hh-rlhf/harmless-base/train.jsonl.gz                  chosen, rejected          (Anthropic/hh-rlhf)
    hh-rlhf/harmless-base/test.jsonl.gz                   chosen, rejected

TinyStories holds `rows` built-in stories for train and a quarter as many (at least 4) for validation; Alpaca
`rows` instruction rows (the horror story-spec instruction, the spec as input, a horror story as output), with no
held-out split of its own; Anthropic HH `rows` train and a quarter as many (at least 4) test pairs of whole
"\\n\\nHuman: ... \\n\\nAssistant: ..." dialogues that differ in the last reply only (horror chosen, wholesome
rejected), some with an earlier exchange. So "TinyStories -> Alpaca -> HH" runs offline, with `datasets` offline
(HF_DATASETS_OFFLINE=1, HF_HUB_OFFLINE=1: the tests' `hf_offline` fixture):

    picolm prepare --source tinystories --hub-dir ROOT/tinystories --out data/ts
    picolm prepare --source alpaca --hub-dir ROOT/alpaca --out data/alpaca
    picolm prepare --source hh-rlhf --hub-dir ROOT/hh-rlhf --out data/hh

(`PrepareOptions(source=..., hub_dir=...)` in Python.) TinyStories keeps its train split and halves its validation
into val and test; Alpaca is split by --split-ratios; HH keeps train and halves test into val and test.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from picolm.data import specs
from picolm.data.records import render_instruction
from picolm.data.stories import generate_stories

ALPACA_PREAMBLE = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                   "Write a response that appropriately completes the request.\n\n")
GREETINGS = (("Hi!", "Hello! What would you like to read today?"),
             ("Can you tell me a story?", "Of course. What should it be about?"))


def _parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _jsonl_gz(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def alpaca_rows(count: int, seed: int) -> list[dict]:
    rows = []
    for row in specs.generate_sft_rows(count, seed=seed):
        instruction, spec, story = specs.INSTRUCTION, row["input"], row["response"]
        text = ALPACA_PREAMBLE + render_instruction(instruction, spec) + story
        rows.append({"instruction": instruction, "input": spec, "output": story, "text": text})
    return rows


def hh_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for row in specs.generate_preference_rows(count, seed=seed):
        earlier = "".join(f"\n\nHuman: {q}\n\nAssistant: {a}" for q, a in GREETINGS[:rng.randrange(3)])
        prompt = f"{earlier}\n\nHuman: {specs.INSTRUCTION}\n{row['input']}\n\nAssistant:"
        rows.append({"chosen": f"{prompt} {row['chosen']}", "rejected": f"{prompt} {row['rejected']}"})
    return rows


def write_hub_copies(root: Path, rows: int = 64, seed: int = 0) -> Path:
    """Write the three copies described above under `root`; returns `root`."""
    root = Path(root)
    held_out = max(4, rows // 4)
    stories = generate_stories(rows + held_out, seed=seed)
    _parquet(root / "tinystories" / "data" / "train-00000-of-00001.parquet", [{"text": t} for t in stories[:rows]])
    _parquet(root / "tinystories" / "data" / "validation-00000-of-00001.parquet",
             [{"text": t} for t in stories[rows:]])
    _parquet(root / "alpaca" / "data" / "train-00000-of-00001.parquet", alpaca_rows(rows, seed))
    pairs = hh_rows(rows + held_out, seed + 1)
    _jsonl_gz(root / "hh-rlhf" / "harmless-base" / "train.jsonl.gz", pairs[:rows])
    _jsonl_gz(root / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", pairs[rows:])
    return root
