"""Numeric sequences of five kinds; each record keeps its kind so evaluation can report per kind."""

from __future__ import annotations

import random
from dataclasses import dataclass

from picolm.errors import PicolmError

KINDS = ("counting", "arithmetic", "geometric", "alternating", "random_walk")
DETERMINISTIC_KINDS = ("counting", "arithmetic", "alternating")


@dataclass
class NumericSpec:
    num_sequences: int = 100_000
    min_length: int = 8
    max_length: int = 16
    max_value: int = 99
    seed: int = 0


def _counting(rng: random.Random, length: int, top: int) -> list[int]:
    start = rng.randint(0, top - length + 1)
    return list(range(start, start + length))


def _arithmetic(rng: random.Random, length: int, top: int) -> list[int]:
    step = rng.randint(2, max(2, top // (length - 1)))
    start = rng.randint(0, top - step * (length - 1))
    seq = [start + step * i for i in range(length)]
    return seq if rng.random() < 0.5 else seq[::-1]


def _geometric(rng: random.Random, length: int, top: int) -> list[int]:
    """Ratio 2 or 3 from a small start; as long as the value range allows (at least 3 terms)."""
    ratio = rng.choice((2, 3)) if top >= 9 else 2
    start = rng.randint(1, max(1, top // ratio ** 2))
    seq = [start]
    while len(seq) < length and seq[-1] * ratio <= top:
        seq.append(seq[-1] * ratio)
    return seq


def _alternating(rng: random.Random, length: int, top: int) -> list[int]:
    a, b = rng.sample(range(top + 1), 2)
    return [a if i % 2 == 0 else b for i in range(length)]


def _random_walk(rng: random.Random, length: int, top: int) -> list[int]:
    seq = [rng.randint(0, top)]
    while len(seq) < length:
        seq.append(min(top, max(0, seq[-1] + rng.choice((-3, -2, -1, 1, 2, 3)))))
    return seq


GENERATORS = {"counting": _counting, "arithmetic": _arithmetic, "geometric": _geometric,
              "alternating": _alternating, "random_walk": _random_walk}


def generate_numeric(spec: NumericSpec) -> list[dict]:
    """Records {"text": "3 5 7 9", "kind": "arithmetic"}, kinds in equal shares, deterministic for a seed."""
    if spec.max_value < 2 * spec.max_length or spec.min_length < 3 or spec.min_length > spec.max_length:
        raise PicolmError("numeric data needs 3 <= min_length <= max_length and max_value >= 2 * max_length",
                          field="--max-value")
    rng = random.Random(spec.seed)
    records = []
    for i in range(spec.num_sequences):
        kind = KINDS[i % len(KINDS)]
        seq = GENERATORS[kind](rng, rng.randint(spec.min_length, spec.max_length), spec.max_value)
        records.append({"text": " ".join(map(str, seq)), "kind": kind})
    rng.shuffle(records)
    return records
