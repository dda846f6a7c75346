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


def _stage_numbers(out: Path) -> dict:
    """Every logged number of the three runs but throughput, which is the machine's."""
    runs = {}
    for stage in ("base", "sft", "dpo"):
        rows = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
        runs[stage] = [{k: v for k, v in row.items() if k != "train/tokens_per_sec"} for row in rows]
    return runs


@pytest.mark.slow
def test_quickstart_writes_the_same_numbers_on_a_machine_fifty_times_slower(tmp_path, monkeypatch):
    """Stages budgeted in steps: a second run whose clock runs fifty times faster (a slow or busy machine, as the
    trainer sees it) trains the same models and evaluates them to the same numbers for the same seed."""
    import shutil
    import time

    from picolm.pipeline import PIPELINES, PipelineOptions, load_pipeline, run_pipeline

    recipe = tmp_path / "quickstart.yaml"  # the built-in recipe with fewer pairs to prepare
    recipe.write_text((PIPELINES / "quickstart.yaml").read_text().replace("num_sequences: 2000", "num_sequences: 200"))
    settings = {"pretraining.train.max_steps": 3, "sft.train.max_steps": 2, "dpo.train.max_steps": 2}
    first = run_pipeline(load_pipeline(recipe), PipelineOptions(tmp_path / "a", "cpu", samples=2, settings=settings))
    shutil.copytree(tmp_path / "a" / "data", tmp_path / "b" / "data")  # the same data, prepared once
    clock = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: 50 * clock())
    second = run_pipeline(load_pipeline(recipe), PipelineOptions(tmp_path / "b", "cpu", samples=2, settings=settings))
    assert second == first
    assert _stage_numbers(tmp_path / "b") == _stage_numbers(tmp_path / "a")
    report = (tmp_path / "b" / "report.md").read_text()
    assert "| base | 3 steps | 3 | step 3 |" in report and "| dpo | 2 steps | 2 | step 2 |" in report


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
