"""Learning, not just running: a tiny model on the built-in numeric sequences, trained for the recipe's 1,200 steps
(the same model on every machine for a seed), then next-token accuracy on the test split after each sequence's first
three numbers.

    python benchmarks/numeric_learning.py [--steps 1200] [--minutes M] [--out runs/bench-numeric]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from picolm.cli import main as picolm_main
from picolm.data.synthetic import DETERMINISTIC_KINDS, KINDS
from picolm.train.tracking import read_metrics

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "numeric-tiny.yaml"


def picolm(args: list[str]) -> None:
    if picolm_main(args) != 0:
        raise SystemExit(f"picolm {args[0]} failed")


def limits(steps: int | None, minutes: float | None) -> list[str]:
    """The recipe's steps unless given others; minutes alone time the run instead, with steps the first limit
    reached stops it."""
    if minutes is None:
        return [] if steps is None else ["--train.max_steps", str(steps)]
    return ["--train.max_steps", "null" if steps is None else str(steps), "--train.max_minutes", str(minutes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's 1,200)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-time budget: alone, it times the run instead of steps (accuracies then depend on "
                             "the machine); with --steps, the first limit reached stops the run")
    parser.add_argument("--out", default="runs/bench-numeric", help="folder for the data, the run and eval.json")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    picolm(["prepare", "--source", "numeric", "--out", str(out / "data")])
    start = time.perf_counter()
    picolm(["train", str(RECIPE), "--data", str(out / "data"), "--out", str(out / "run"),
            *limits(args.steps, args.minutes), "--log.progress", "false"])
    minutes = (time.perf_counter() - start) / 60
    picolm(["eval", str(out / "run"), "--split", "test", "--json", str(out / "eval.json")])
    metrics = json.loads((out / "eval.json").read_text())
    steps = read_metrics(out / "run")[-1]["step"]
    print(f"\ntrained {steps} steps in {minutes:.2f} min; test accuracy after the first 3 numbers:")
    for kind in KINDS:
        mark = " (deterministic, target >= 0.95)" if kind in DETERMINISTIC_KINDS else ""
        print(f"  {kind:<12} {metrics[f'accuracy_after_3/{kind}']:.3f}{mark}")
    worst = min(metrics[f"accuracy_after_3/{k}"] for k in DETERMINISTIC_KINDS)
    print(f"worst deterministic kind: {worst:.3f} ({worst / 0.95:.2f}x the 0.95 target)")


if __name__ == "__main__":
    main()
