"""`picolm compare RECIPE.yaml`: recipes are checked before training, every run is trained, evaluated, sampled
and analysed, the report holds the figures, and a second invocation continues rather than retrains."""

import json
from pathlib import Path

import pytest
import yaml

from picolm.analysis.experiment import BUILT_IN, load_experiment
from picolm.cli import main

TINY_RECIPE = """
title: Tiny softmax vs linear
description: Two runs that differ in one setting.
data:
  source: numeric
recipe:
  model: {n_layer: 1, n_head: 2, n_embd: 32, block_size: 32, position: rope}
  train: {max_steps: 6, batch_size: 8, eval_every: 3, eval_batches: 2, num_samples: 0}
  log: {progress: false}
runs:
  softmax: {model.attention: softmax}
  linear:
    model:
      attention: linear
evaluate:
  splits: [val, test]
  metrics: [perplexity, accuracy, kinds, length]
  max_windows: 4
analyze: [pca]
samples:
  prompts: ["3 4 5", "2 4 6"]
  max_new_tokens: 4
  temperature: 0
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def experiment(numeric_data, tmp_path_factory):
    """The tiny experiment, run once through the CLI on the session's numeric data."""
    root = tmp_path_factory.mktemp("experiment")
    recipe = write(root, TINY_RECIPE)
    assert main(["compare", str(recipe), "--out", str(root / "out"), "--data", str(numeric_data), "--device", "cpu"]) == 0
    return root / "out", recipe


def test_every_run_is_trained_evaluated_sampled_and_analysed(experiment):
    out, _ = experiment
    results = json.loads((out / "results.json").read_text())["runs"]
    assert list(results) == ["softmax", "linear"]
    for name, run in results.items():
        assert run["settings"] == {"model.attention": name} and run["steps"] == 6
        assert run["parameters"] == results["softmax"]["parameters"]  # the same size: only the attention differs
        metrics = run["metrics"]
        for split in ("val", "test"):
            assert metrics[f"{split}/perplexity"] == pytest.approx(2.718281828 ** metrics[f"{split}/loss"])
            assert 0 <= metrics[f"{split}/accuracy_after_3/counting"] <= 1 and f"{split}/loss/counting" in metrics
        assert "length/accuracy" in metrics and "val/length/accuracy" not in metrics  # split-free: computed once
        assert len(run["samples"]["texts"]) == 2 and run["samples"]["texts"][0].startswith("3 4 5")
        assert run["samples"]["tokens_per_second"] > 0
        assert run["analysis"] == [str(out / "runs" / name / "analysis" / "embedding_pca.png")]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_the_report_tables_the_runs_and_their_kinds(experiment):
    out, _ = experiment
    report = (out / "table.md").read_text()
    results = json.loads((out / "results.json").read_text())["runs"]
    assert report.startswith("# Tiny softmax vs linear\n\nTwo runs that differ in one setting.")
    row = next(line for line in report.splitlines() if line.startswith("| linear | model.attention=linear"))
    assert f"{results['linear']['metrics']['test/loss']:.4g}" in row
    assert "### test split" in report and "### Sequences longer than any seen in training" in report
    assert "| counting |" in report and "![loss curves](curves.png)" in report
    assert "runs/softmax/analysis/embedding_pca.png" in report and "new tokens/s" in report


def test_running_again_continues_instead_of_retraining(experiment, numeric_data, capsys):
    out, recipe = experiment
    before = (out / "runs" / "linear" / "metrics.jsonl").read_text()
    assert main(["compare", str(recipe), "--out", str(out), "--data", str(numeric_data), "--device", "cpu"]) == 0
    assert (out / "runs" / "linear" / "metrics.jsonl").read_text() == before
    capsys.readouterr()
    assert main(["compare", str(recipe), "--out", str(out), "--data", str(numeric_data),
                 "--model.n_embd", "64"]) == 2
    assert "was trained with model.n_embd = 32, not 64: remove it or pass another --out" in capsys.readouterr().err


def test_the_first_source_that_can_be_prepared_is_used(tmp_path, capsys):
    from picolm.analysis.experiment import prepare_data

    experiment = load_experiment(write(tmp_path, TINY_RECIPE.replace(
        "data:\n  source: numeric", f"data:\n  - source: {tmp_path / 'missing.txt'}\n  - source: numeric\n"
                                    "    num_sequences: 200")))
    lines = []
    data = prepare_data(experiment, tmp_path / "data", log=lines.append)
    assert data.name == "numeric" and (data / "train.bin").is_file()
    assert any("is not available" in line for line in lines)


@pytest.mark.parametrize("edit, message", [
    (("runs:", "runz:"), "experiment.yaml:10: runz: unknown key"),
    (("{model.attention: softmax}", "{model.attention: sparse}"),
     "experiment.yaml:11: model.attention: run softmax: must be one of softmax, linear"),
    (("attention: linear", "attentionn: linear"), "experiment.yaml:14: model.attentionn: run linear: unknown field"),
    (("max_steps: 6", "max_steps: six"), "experiment.yaml:8: train.max_steps: run softmax: expected"),
    (("  prompts:", "  prompt:"), "samples.prompt: unknown key"),
    (("data:\n  source: numeric", "data:\n  limit: 3"), "data: each data entry is a mapping"),
])
def test_a_bad_recipe_is_refused_before_training_with_its_line(tmp_path, edit, message, capsys):
    recipe = write(tmp_path, TINY_RECIPE.replace(*edit))
    assert main(["compare", str(recipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_settings_are_refused_when_comparing_finished_runs(trained_run, capsys):
    assert main(["compare", str(trained_run), str(trained_run), "--train.max_steps", "3"]) == 2
    assert "apply to a compare recipe" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(p.stem for p in BUILT_IN.glob("*compare*.yaml")))
def test_every_built_in_recipe_is_valid(name):
    experiment = load_experiment(name)
    assert experiment.title and experiment.description and len(experiment.runs) >= 2


FAMILIES_RECIPE = """
title: Tiny AR vs diffusion
data:
  source: numeric
recipe:
  model: {n_layer: 1, n_head: 2, n_embd: 32, block_size: 32, position: rope}
  train: {max_steps: 6, batch_size: 8, eval_every: 3, eval_batches: 2, num_samples: 0}
  log: {progress: false}
runs:
  ar: {model.causal: true}
  mdlm: {model.causal: false, objective.kind: mdlm}
  sdd: {model.arch: sdd, model.causal: false, objective.kind: sdd, objective.sdd_k: 2}
evaluate:
  splits: [test]
  metrics: [perplexity, accuracy, generation]
  max_windows: 4
samples:
  prompts: ["3 4 5", "2 4 6"]
  max_new_tokens: 6
  temperature: 0.8
  steps: 6
"""


def test_every_family_is_compared_in_one_vocabulary_with_its_samples(numeric_data, tmp_path):
    recipe = write(tmp_path, FAMILIES_RECIPE)
    assert main(["compare", str(recipe), "--out", str(tmp_path / "out"), "--data", str(numeric_data)]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    for name, run in results.items():
        metrics = run["metrics"]
        assert {"test/loss", "test/perplexity", "test/accuracy", "generation/distinct_2",
                "generation/self_bleu"} <= set(metrics), name
        assert run["samples"]["length"] > 0, name
    assert results["sdd"]["samples"]["length"] == 1.0  # the length is decided first: no empty samples
    assert all(len(text.split()) == 3 + 6 for text in results["sdd"]["samples"]["texts"])
    report = (tmp_path / "out" / "table.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| run |"))
    assert "generation/distinct_2" in header and "generation/self_bleu" in header and "sample length" in header
    assert "upper bound" in report and "not a bound" in report  # what mdlm's and sdd's perplexities are


def test_the_report_shows_the_settings_each_run_trained_with_after_overrides(numeric_data, tmp_path):
    recipe = write(tmp_path, TINY_RECIPE.split("analyze:")[0])  # training and evaluation only
    out = tmp_path / "out"
    assert main(["compare", str(recipe), "--out", str(out), "--data", str(numeric_data), "--train.max_steps", "3",
                 "--model.preset", "tiny", "--model.n_embd", "48"]) == 0
    saved = yaml.safe_load((out / "runs" / "linear" / "config.yaml").read_text())
    # the recipe's own n_layer, n_head and block_size win over the preset's; the command line's n_embd over both
    assert saved["train"]["max_steps"] == 3 and saved["model"]["n_layer"] == 1 and saved["model"]["n_embd"] == 48
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["train.max_steps"] == 3 and results["settings"]["train.batch_size"] == 8
    shown = {key: results["settings"][key] for key in ("model.n_layer", "model.n_head", "model.n_embd",
                                                       "model.block_size")}
    assert shown == {f"model.{key}": saved["model"][key] for key in ("n_layer", "n_head", "n_embd", "block_size")}
    assert all(run["steps"] == 3 for run in results["runs"].values())
    report = (out / "table.md").read_text()
    line = next(line for line in report.splitlines() if line.startswith("Data:"))
    assert "train.max_steps=3," in line and "max_steps=6" not in line and "model.n_embd=48," in line
    assert "model.preset" not in line  # a preset is shown as the fields it set


def test_finished_runs_are_compared_with_the_settings_that_set_them_apart(experiment, tmp_path, capsys):
    out, _ = experiment
    assert main(["compare", str(out / "runs" / "softmax"), str(out / "runs" / "linear"), "--out",
                 str(tmp_path / "c")]) == 0
    table = capsys.readouterr().out
    assert "| run | settings | steps |" in table
    assert "| softmax | model.attention=softmax | 6 |" in table and "| linear | model.attention=linear | 6 |" in table
