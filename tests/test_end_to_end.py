"""Slow end-to-end runs: the quickstart as a user runs it, and a model that really learns."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from picolm.cli import main
from picolm.data.synthetic import DETERMINISTIC_KINDS

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.mark.slow
def test_quickstart_prepares_trains_evaluates_and_samples(tmp_path):
    result = subprocess.run([sys.executable, "-m", "picolm", "quickstart", "--out", str(tmp_path), "--max-steps",
                             "60"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert sum(s["tokens"] for s in meta["splits"].values()) >= 2_000_000
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val/loss"] for r in rows if "val/loss" in r]
    assert val[-1] < math.log(meta["vocab_size"]) - 2.0  # far below a uniform guess
    assert "test: loss" in result.stdout and f"run directory: {run}" in result.stdout
    assert (run / "plots" / "loss.png").is_file() and (run / "samples.txt").read_text().strip()


@pytest.mark.slow
def test_tiny_model_learns_the_deterministic_numeric_kinds(tmp_path):
    data = tmp_path / "numeric"
    assert main(["prepare", "--source", "numeric", "--out", str(data)]) == 0
    run = tmp_path / "run"
    assert main(["train", str(RECIPES / "numeric-tiny.yaml"), "--data", str(data), "--out", str(run),
                 "--train.max_steps", "600", "--log.progress", "false"]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--split", "test", "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    for kind in DETERMINISTIC_KINDS:
        assert metrics[f"accuracy_after_3/{kind}"] >= 0.9, (kind, metrics)
    assert metrics["accuracy_after_3/random_walk"] < 0.5  # unpredictable by construction
