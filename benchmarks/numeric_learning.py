"""Learning, not just running: a tiny model on the built-in numeric sequences, trained within a CPU
time budget, then next-token accuracy on the test split after each sequence's first three numbers.

    python benchmarks/numeric_learning.py [--minutes 5] [--out runs/bench-numeric]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from picolm.cli import main as picolm_main


def picolm(args: list[str]) -> None:
    if picolm_main(args) != 0:
        raise SystemExit(f"picolm {args[0]} failed")
from picolm.data.synthetic import DETERMINISTIC_KINDS, KINDS

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "numeric-tiny.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0, help="wall-time budget for training")
    parser.add_argument("--out", default="runs/bench-numeric")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    picolm(["prepare", "--source", "numeric", "--out", str(out / "data")])
    start = time.perf_counter()
    picolm(["train", str(RECIPE), "--data", str(out / "data"), "--out", str(out / "run"),
            "--train.max_minutes", str(args.minutes), "--log.progress", "false"])
    minutes = (time.perf_counter() - start) / 60
    picolm(["eval", str(out / "run"), "--split", "test", "--json", str(out / "eval.json")])
    metrics = json.loads((out / "eval.json").read_text())
    print(f"\ntrained in {minutes:.2f} min (budget {args.minutes:g}); test accuracy after the first 3 numbers:")
    for kind in KINDS:
        mark = " (deterministic, target >= 0.95)" if kind in DETERMINISTIC_KINDS else ""
        print(f"  {kind:<12} {metrics[f'accuracy_after_3/{kind}']:.3f}{mark}")
    worst = min(metrics[f"accuracy_after_3/{k}"] for k in DETERMINISTIC_KINDS)
    print(f"worst deterministic kind: {worst:.3f} ({worst / 0.95:.2f}x the 0.95 target)")


if __name__ == "__main__":
    main()
