"""`picolm pipeline RECIPE.yaml`: recipes are checked before anything runs (one line naming the recipe's line), a
tiny pipeline on built-in data writes the quickstart's report, running it again continues, and a step whose inputs
changed is refused."""

import json
import textwrap
from pathlib import Path

import pytest

from picolm.cli import main
from picolm.errors import PicolmError
from picolm.pipeline import PIPELINES, load_pipeline

TINY = """\
title: tiny
description: a pipeline in seconds
data:
  stories: {source: stories, vocab_size: 512, num_sequences: 300}
  sft: {source: horror-sft, num_sequences: 200}
  pairs: {source: horror-dpo, num_sequences: 200}
stages:
  pretraining:
    recipe: stories-tiny.yaml
    data: stories
    settings: {train.max_steps: 4, model.n_layer: 1, model.block_size: 256, train.eval_every: 2}
  sft:
    recipe: horror-sft.yaml
    data: sft
    settings: {train.max_steps: 3, objective.monitor: "data:pairs", train.eval_every: 2}
  dpo:
    recipe: horror-dpo.yaml
    data: pairs
    settings: {train.max_steps: 2, train.eval_every: 1}
evaluate: {sft: sft, pairs: pairs, samples: 2, max_new_tokens: 8, lexicon: horror}
"""


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(p.stem for p in PIPELINES.glob("*.yaml")))
def test_every_built_in_pipeline_loads_and_builds_each_stage(name):
    pipeline = load_pipeline(name)
    assert [s.name for s in pipeline.stages] == ["pretraining", "sft", "dpo"]
    assert pipeline.evaluate["sft"] in pipeline.data and pipeline.evaluate["pairs"] in pipeline.data


BAD = [
    ("nonsense: 1\n", "nonsense", 1, "unknown key"),
    ("data: {a: {source: stories, vocab: 3}}\nstages: {pretraining: {recipe: stories-tiny.yaml, data: a}}\n",
     "data.a.vocab", 1, "not a `picolm prepare` option"),
    ("data: {a: {source: stories}}\nstages:\n  pretrain: {recipe: stories-tiny.yaml, data: a}\n",
     "stages.pretrain", 3, "unknown stage"),
    ("data: {a: {source: stories}}\nstages:\n  pretraining: {recipe: nowhere.yaml, data: a}\n",
     "stages.pretraining.recipe", 3, "not found"),
    ("data: {a: {source: stories}}\nstages:\n  pretraining: {recipe: stories-tiny.yaml, data: b}\n",
     "stages.pretraining.data", 3, "names no data"),
    ("data: {a: {source: stories}}\nstages:\n  pretraining:\n    recipe: stories-tiny.yaml\n    data: a\n"
     "    settings:\n      train.max_steps: -3\n", "train.max_steps", 7, "stage pretraining"),
    ("data: {a: {source: stories}}\nstages:\n  pretraining:\n    recipe: stories-tiny.yaml\n    data: a\n"
     "    settings:\n      objective.monitor: 'data:b'\n", "objective.monitor", 7, "names no data"),
    ("data: {a: {source: stories}}\nstages:\n  dpo: {recipe: horror-dpo.yaml, data: a}\n"
     "  sft: {recipe: horror-sft.yaml, data: a}\n", "stages", 2, "in the order"),
    ("data: {a: {source: stories}}\nstages: {sft: {recipe: horror-sft.yaml, data: a}}\nevaluate: {pairs: z}\n",
     "evaluate.pairs", 3, "names no data"),
    ("data: {a: {source: stories}}\nstages:\n  sft:\n    recipe: horror-sft.yaml\n    data: a\n"
     "    settings: {data.path: elsewhere}\n", "data.path", 6, "set by the pipeline: use a stage's data"),
    ("data: {..: {source: stories}}\nstages: {sft: {recipe: horror-sft.yaml, data: ..}}\n", "data...", 1,
     "names a folder"),
    ("data: {a: {source: stories}}\nstages: {sft: {recipe: horror-sft.yaml, data: a}}\nevaluate: {samples: 0}\n",
     "evaluate.samples", 3, "a whole number"),
    ("data: {a: {source: stories}}\nstages: {sft: {recipe: horror-sft.yaml, data: a}}\n"
     "evaluate: {max_new_tokens: 1.5}\n", "evaluate.max_new_tokens", 3, "a whole number"),
    ("data: {a: {source: stories}}\nstages: {sft: {recipe: horror-sft.yaml, data: a}}\n"
     "evaluate: {lexicon: words.txt}\n", "evaluate.lexicon", 3, "no such lexicon file"),
]


@pytest.mark.parametrize("text,field,line,words", BAD)
def test_a_bad_recipe_is_one_line_naming_its_line_and_field(tmp_path, text, field, line, words):
    path = write(tmp_path, text)
    with pytest.raises(PicolmError, match=words) as caught:
        load_pipeline(path)
    assert (caught.value.field, caught.value.line, Path(caught.value.path)) == (field, line, path)


def test_the_settings_the_pipeline_gives_every_stage_are_refused_on_the_command_line(tmp_path, capsys):
    recipe = write(tmp_path, TINY)
    for setting, instead in (("--train.device", "--device"), ("--sft.train.init_from", "--init-from")):
        assert main(["pipeline", str(recipe), "--out", str(tmp_path / "out"), setting, "x"]) == 2
        assert f"set by the pipeline: use {instead}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_missing_recipe_names_the_built_in_ones(tmp_path, capsys):
    assert main(["pipeline", str(tmp_path / "none.yaml")]) == 2
    assert "pipeline recipe not found (built-in: quickstart, tinystories-alpaca-hh)" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_pipeline_reports_continues_and_refuses_changed_inputs(tmp_path, capsys):
    recipe, out = write(tmp_path, TINY), tmp_path / "out"
    assert main(["pipeline", str(recipe), "--out", str(out), "--device", "cpu"]) == 0
    report = (out / "report.md").read_text()
    assert report.startswith("# tiny") and "a pipeline in seconds" in report
    for model in ("base", "sft", "dpo"):
        assert f"| {model} |" in report
        assert (out / model / "checkpoints" / "last.pt").is_file()
    assert (out / "plots" / "curves.png").is_file()
    record = json.loads((out / "pipeline.json").read_text())
    assert set(record) == {"data stories", "data sft", "data pairs", "stage pretraining", "stage sft", "stage dpo"}
    sft_config = (out / "sft" / "config.yaml").read_text()
    assert str(out / "data" / "pairs") in sft_config  # `data:pairs` became the folder

    capsys.readouterr()
    assert main(["pipeline", str(recipe), "--out", str(out), "--device", "cpu"]) == 0  # continues: nothing to train
    assert "using" in capsys.readouterr().out
    assert json.loads((out / "pipeline.json").read_text()) == record

    assert main(["pipeline", str(recipe), "--out", str(out), "--sft.train.lr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "stage sft was made from other inputs (train.lr: 0.001 -> 0.01)" in err and "remove" in err
    write(tmp_path, TINY.replace("num_sequences: 200}\n  pairs", "num_sequences: 150}\n  pairs"))
    assert main(["pipeline", str(recipe), "--out", str(out)]) == 2
    assert "data sft was made from other inputs (num_sequences: 200 -> 150)" in capsys.readouterr().err


@pytest.mark.slow
def test_init_from_skips_pretraining_and_a_changed_start_refuses_the_next_stage(tmp_path, capsys):
    recipe, out = write(tmp_path, TINY), tmp_path / "first"
    assert main(["pipeline", str(recipe), "--out", str(out), "--device", "cpu", "--dpo.train.max_steps", "1"]) == 0
    second = tmp_path / "second"
    assert main(["pipeline", str(recipe), "--out", str(second), "--init-from", str(out / "base"),
                 "--dpo.train.max_steps", "1"]) == 0
    assert not (second / "base").exists() and (second / "sft" / "checkpoints" / "last.pt").is_file()
    assert not (second / "data" / "stories").exists()  # pretraining's corpus is not prepared
    assert "given (--init-from)" in (second / "report.md").read_text()
    capsys.readouterr()
    assert main(["pipeline", str(recipe), "--out", str(second), "--init-from", str(out / "sft"),
                 "--dpo.train.max_steps", "1"]) == 2
    assert "stage sft was made from other inputs (train.init_from" in capsys.readouterr().err
    assert main(["pipeline", str(recipe), "--out", str(tmp_path / "third"), "--init-from", str(tmp_path / "no")]) == 2
    assert "no such run directory or checkpoint" in capsys.readouterr().err and not (tmp_path / "third").exists()


@pytest.mark.slow
def test_the_hub_pipeline_runs_offline_on_local_copies(tmp_path, hf_offline, capsys):
    """TinyStories -> Alpaca -> Anthropic HH through their real loading code, on local copies in the hub's layout."""
    from hub_copies import write_hub_copies

    hub, out = write_hub_copies(tmp_path / "hub", rows=200), tmp_path / "out"
    assert main(["pipeline", "tinystories-alpaca-hh", "--hub-dir", str(hub), "--out", str(out), "--device", "cpu",
                 "--pretraining.train.max_steps", "3", "--sft.train.max_steps", "2", "--dpo.train.max_steps", "2",
                 "--samples", "2"]) == 0, capsys.readouterr().err
    sources = [json.loads((out / "data" / name / "meta.json").read_text())["source"]
               for name in ("tinystories", "alpaca", "hh")]
    assert sources == ["tinystories", "alpaca", "hh-rlhf"]
    report = (out / "report.md").read_text()
    assert report.startswith("# TinyStories -> Alpaca -> Anthropic HH")
    header = next(line for line in report.splitlines() if line.startswith("| model |")).split("|")
    dpo = dict(zip(header, next(line for line in report.splitlines() if line.startswith("| dpo |")).split("|")))
    for column in ("SFT test loss", "preference accuracy", "log-prob accuracy", "ROUGE-L", "chrF", "format compliance"):
        float(dpo[f" {column} "])  # measured on the held-out Alpaca rows and HH pairs
