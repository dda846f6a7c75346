"""The family interface: a new family is one class and one `register` line (here, a toy defined in this file, trained
through the command line without touching the trainer, eval or generate); the registry's choice of family; the
settings a family does not read are refused; and the one metric vocabulary every family logs."""

import json
import math

import pytest

from conftest import TINY
from picolm.cli import main
from picolm.config import Config, ModelConfig, ObjectiveConfig, build_config
from picolm.errors import PicolmError
from picolm.methods import FAMILIES, check_config, check_settings, family_for, family_of, register
from picolm.methods.family import Family, Objective
from picolm.methods.sampling import LeftToRight


class CopyToken(Objective):
    """Predict each token itself rather than the next one: a causal model learns it at once."""

    def loss(self, model, batch):
        loss, correct, counted = model(batch["input_ids"], targets=batch["input_ids"])
        return loss, {"loss": (loss.detach() * counted, counted), "accuracy": (correct, counted)}


class CopyFamily(Family):
    kind = "copy"
    title = "token copying"
    tasks = ("text",)
    evaluations = ("perplexity", "accuracy", "generation")
    sampler = LeftToRight()

    def objective(self, config, tokenizer, task):
        return CopyToken()


@pytest.fixture
def copy_family():
    register(CopyFamily())
    yield
    del FAMILIES["copy"]


def test_a_family_defined_here_trains_through_the_command_line(copy_family, numeric_data, tmp_path, capsys):
    run = tmp_path / "copy"
    assert main(["train", "--data", str(numeric_data), "--out", str(run), *TINY, "--objective.kind", "copy",
                 "--train.max_steps", "30", "--train.lr", "3e-3", "--train.log_every", "5"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "val/accuracy" in r][-1]
    assert last["val/accuracy"] > 0.95  # copying is easy; next-token prediction of this data is not
    assert {"train/loss", "train/accuracy", "train/perplexity", "train/lr", "train/tokens_per_sec"} <= set(rows[-2])
    assert "objective:\n  kind: copy" in (run / "config.yaml").read_text()
    assert "run_name: gpt-numeric" in (run / "config.yaml").read_text()  # named by its network: no label set
    assert main(["generate", str(run), "--prompt", "3 4 5", "--max-new-tokens", "4"]) == 0
    assert main(["train", "--data", str(numeric_data), "--out", str(tmp_path / "bad"), *TINY,
                 "--objective.kind", "copy", "--objective.beta", "0.5"]) == 2
    assert "objective.beta: applies to dpo (this run trains copy)" in capsys.readouterr().err


def test_unknown_families_are_named(numeric_data, tmp_path, capsys):
    assert main(["train", "--data", str(numeric_data), "--out", str(tmp_path / "run"), *TINY,
                 "--objective.kind", "copy"]) == 2
    assert "objective.kind: must be one of auto, sdd, mdlm, next_token, sft, dpo" in capsys.readouterr().err


@pytest.mark.parametrize("kind, task, model, expected", [
    ("auto", "text", ModelConfig(), "next_token"),
    ("auto", "sft", ModelConfig(), "sft"),
    ("auto", "dpo", ModelConfig(), "dpo"),
    ("auto", "text", ModelConfig(causal=False, mask_id=10, vocab_size=11), "mdlm"),  # the starting model's family
    ("auto", "sft", ModelConfig(causal=False, mask_id=10, vocab_size=11), "mdlm"),
    ("auto", "sft", ModelConfig(arch="sdd", causal=False), "sdd"),
    ("mdlm", "text", ModelConfig(causal=False), "mdlm"),
    ("mdlm", "sft", ModelConfig(causal=False), "mdlm"),
    ("next_token", "text", ModelConfig(), "next_token"),
])
def test_the_registry_picks_the_family(kind, task, model, expected):
    assert family_for(kind, task, model).kind == expected


@pytest.mark.parametrize("kind, task, model, message", [
    ("auto", "dpo", ModelConfig(causal=False, mask_id=10, vocab_size=11), "mdlm training needs text or sft data"),
    ("next_token", "sft", ModelConfig(), "next_token training needs text data"),
    ("sft", "text", ModelConfig(arch="sdd", causal=False), "this sparse distribution diffusion model trains on only"),
    ("nonsense", "text", ModelConfig(), "must be one of auto"),
])
def test_the_registry_refuses_what_cannot_train(kind, task, model, message):
    with pytest.raises(PicolmError, match=message):
        family_for(kind, task, model)


def test_trained_models_are_sampled_and_scored_by_their_own_family():
    assert family_of(ModelConfig()).kind == "next_token"
    assert family_of(ModelConfig(causal=False, mask_id=10, vocab_size=11)).kind == "mdlm"
    assert family_of(ModelConfig(arch="sdd", causal=False)).kind == "sdd"
    assert family_of(ModelConfig(arch="hf")).sampler is family_of(ModelConfig()).sampler


@pytest.mark.parametrize("field, value", [("beta", 0.5), ("loss", "ipo"), ("label_smoothing", 0.1),
                                          ("length_normalize", True), ("reference", "live"), ("monitor", "data/x"),
                                          ("eps", 0.01), ("sdd_k", 2), ("sdd_k_curriculum", [1, 2])])
def test_every_objective_setting_is_read_by_some_family_and_refused_by_the_others(field, value):
    """Walks every field of ObjectiveConfig (a new one must be added here): set, it is accepted exactly by the
    families that declare they read it."""
    import dataclasses

    assert {f.name for f in dataclasses.fields(ObjectiveConfig)} - {"kind"} == {
        "beta", "loss", "label_smoothing", "length_normalize", "reference", "monitor", "eps", "sdd_k",
        "sdd_k_curriculum"}
    objective = ObjectiveConfig(**{field: value})
    readers = [family for family in FAMILIES.values() if field in family.settings]
    assert readers, f"objective.{field} is read by no family"
    for family in FAMILIES.values():
        if family in readers:
            check_settings(objective, family)
        else:
            with pytest.raises(PicolmError, match=f"objective.{field}: applies to"):
                check_settings(objective, family)


@pytest.mark.parametrize("name", ["next_token", "sft", "mdlm", "sdd"])
def test_every_language_modelling_family_reports_the_shared_metric_names(name):
    """One vocabulary: loss, perplexity and accuracy from every family that models text, its extras beside them."""
    family = FAMILIES[name]
    assert family.metric_names(family.tasks[0])[:3] == ["loss", "perplexity", "accuracy"]
    finished = family.finish({"loss": 2.0, "accuracy": 0.5})
    assert finished["perplexity"] == pytest.approx(math.exp(2.0))


def test_the_metric_table_in_the_readme_names_every_familys_metrics():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| family |"):]
    table = table[:table.index("\n\n")]
    for family in FAMILIES.values():
        row = next((line for line in table.splitlines() if line.startswith(f"| `{family.kind}`")), None)
        assert row is not None, f"README's metric table has no row for {family.kind}"
        for metric in family.metric_names(family.tasks[0]):
            assert f"`{metric}`" in row, f"{metric} of {family.kind} is missing from README's metric table"


@pytest.mark.parametrize("field", sorted({name for family in FAMILIES.values() for name in family.sets}))
def test_a_fresh_config_may_not_set_the_ids_a_family_adds(field):
    config = build_config(None, {f"model.{field}": 5, "model.vocab_size": 6})
    with pytest.raises(PicolmError, match=f"model.{field}: belongs to"):
        check_config(config)
    assert check_config(Config()) == []
