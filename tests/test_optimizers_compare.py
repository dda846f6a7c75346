"""The `optimizers-compare` recipe (AdamW vs Muon+AdamW at matched steps): it loads, its two runs differ in the
optimizer only, Muon takes the blocks' matrices as aaholmes/diffusion-llm's Muon run does, picolm's Muon steps as
torch.optim.Muon (the optimizer that run uses) does, and both runs train through `picolm compare`."""

import json

import pytest
import torch

from picolm.analysis.experiment import load_experiment
from picolm.cli import main
from picolm.config import build_config
from picolm.models.build import build_model
from picolm.train.optim import Muon, build_optimizers


@pytest.fixture(scope="module")
def experiment():
    return load_experiment("optimizers-compare")


def test_the_runs_differ_in_the_optimizer_only_at_matched_steps(experiment):
    assert list(experiment.runs) == ["adamw", "muon"]
    assert {name: settings["train.optimizer"] for name, settings in experiment.runs.items()} == \
        {"adamw": "adamw", "muon": "muon"}
    assert all(key.startswith("train.") for settings in experiment.runs.values() for key in settings)
    configs = {name: build_config(None, {**experiment.recipe, **run}) for name, run in experiment.runs.items()}
    assert configs["adamw"].model == configs["muon"].model  # the same network
    assert all(c.train.max_minutes is None and c.train.epochs is None for c in configs.values())  # steps, not minutes
    assert configs["adamw"].train.max_steps == configs["muon"].train.max_steps
    assert experiment.data[0]["source"] == "stories" and "val" in experiment.splits


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(experiment):
    config = build_config(None, {**experiment.recipe, **experiment.runs["muon"], "model.vocab_size": 256})
    model = build_model(config.model)
    adamw, muon = build_optimizers(model, config.train, "cpu")
    assert isinstance(muon, Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): name for name, p in model.named_parameters()}
    in_muon = {names[id(p)] for group in muon.param_groups for p in group["params"]}
    in_adamw = {names[id(p)] for group in adamw.param_groups for p in group["params"]}
    assert in_muon == {name for name, p in model.named_parameters() if p.ndim == 2 and name.startswith("blocks.")}
    assert in_adamw == set(names.values()) - in_muon  # embeddings, norms and biases
    assert muon.param_groups[0]["lr"] == config.train.muon_lr and adamw.param_groups[0]["lr"] == config.train.lr


@pytest.mark.parametrize("shape", [(96, 32), (32, 96)])
def test_muon_steps_as_torch_muon_does(shape):
    """Nesterov momentum, the orthogonalised update, decoupled weight decay and the sqrt(rows/cols) scale of tall
    matrices, against torch.optim.Muon; torch orthogonalises in bfloat16, hence the tolerance."""
    torch.manual_seed(0)
    start = torch.randn(shape)
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    optimizers = [Muon([ours], lr=0.02, momentum=0.95, weight_decay=0.1),
                  torch.optim.Muon([theirs], lr=0.02, momentum=0.95, weight_decay=0.1)]
    for _ in range(5):
        grad = torch.randn(shape)
        for param, optimizer in zip((ours, theirs), optimizers):
            param.grad = grad.clone()
            optimizer.step()
    moved = (theirs - start).detach()
    assert moved.norm() > 0.05
    assert ((ours - theirs).norm() / moved.norm()).item() < 0.03


@pytest.mark.slow
def test_both_runs_train_through_compare(tmp_path):
    from picolm.data.pack import prepare
    from picolm.data.preparation import PrepareOptions

    data = tmp_path / "stories"
    prepare(PrepareOptions(source="stories", out=str(data), vocab_size=512, num_sequences=300), log=lambda *a: None)
    out = tmp_path / "out"
    assert main(["compare", "optimizers-compare", "--out", str(out), "--data", str(data), "--device", "cpu",
                 "--train.max_steps", "2", "--train.eval_every", "1", "--train.eval_batches", "1",
                 "--train.warmup_steps", "1", "--log.progress", "false"]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [runs[name]["steps"] for name in ("adamw", "muon")] == [2, 2]
    assert runs["adamw"]["parameters"] == runs["muon"]["parameters"]
    assert runs["muon"]["metrics"]["val/loss"] != runs["adamw"]["metrics"]["val/loss"]  # different optimizers
    assert (out / "curves.png").is_file() and "| muon |" in (out / "table.md").read_text()
