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
def test_quickstart_runs_the_whole_pipeline_and_writes_the_report(tmp_path):
    result = subprocess.run([sys.executable, "-m", "picolm", "quickstart", "--out", str(tmp_path), "--device", "cpu",
                             "--pretrain-steps", "60", "--sft-steps", "30", "--dpo-steps", "20", "--samples", "4"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "data" / "stories" / "meta.json").read_text())
    assert sum(s["tokens"] for s in meta["splits"].values()) >= 2_000_000
    base = [json.loads(line) for line in (tmp_path / "base" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val/loss"] for r in base if "val/loss" in r][-1] < math.log(meta["vocab_size"]) - 2.0
    sft = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert any("monitor/logps/chosen" in r for r in sft)
    for stage in ("base", "sft", "dpo"):
        assert (tmp_path / stage / "checkpoints" / "best.pt").is_file()
        assert (tmp_path / stage / "samples.txt").read_text().strip()
    report = (tmp_path / "report.md").read_text()
    dpo_row = next(line for line in report.splitlines() if line.startswith("| dpo |"))
    preference_accuracy = float(dpo_row.split("|")[5])
    assert preference_accuracy > 0.5  # twenty steps already separate horror from wholesome stories
    assert "![SFT monitor and DPO rewards](plots/curves.png)" in report and "### Prompt 1" in report
    assert (tmp_path / "plots" / "curves.png").is_file()


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
