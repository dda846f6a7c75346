"""The training loop: exact resume, accumulation, early stopping, NaN handling, checkpoints, tracking."""

import json
import os
import signal
import sys
import types

import pytest
import torch

from picolm.config import build_config
from picolm.errors import PicolmError, TrainingStopped
from picolm.methods.family import Objective
from picolm.checkpoint import load_checkpoint
from picolm.train.optim import lr_factor, newton_schulz
from picolm.train.trainer import Trainer

TINY = {"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 32,
        "train.batch_size": 8, "train.eval_every": 5, "train.eval_batches": 2, "train.log_every": 1,
        "train.lr": 3e-3, "train.warmup_steps": 2, "log.progress": False, "train.num_samples": 0}


def make_trainer(data, run_dir, resume=False, **overrides):
    config = build_config(None, {**TINY, "data.path": str(data), **overrides})
    return Trainer(config, run_dir, resume=resume, log=lambda *a: None)


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r], \
        [(r["step"], r["val/loss"]) for r in rows if "val/loss" in r]


def interrupt_after(trainer, steps):
    """Deliver a real SIGINT (Ctrl-C) once the trainer has finished `steps` optimizer steps."""
    original = trainer.train_step

    def step(*args):
        result = original(*args)
        if trainer.global_step + 1 == steps:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    trainer.train_step = step


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_interrupt_and_resume_reproduce_an_uninterrupted_run_exactly(numeric_data, tmp_path, schedule):
    settings = {"train.max_steps": 16, "model.dropout": 0.1, "train.schedule": schedule}
    make_trainer(numeric_data, tmp_path / "whole", **settings).fit()

    first = make_trainer(numeric_data, tmp_path / "split", **settings)
    interrupt_after(first, 7)
    assert first.fit().stop_reason == "interrupted"
    assert load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["global_step"] == 7
    resumed = make_trainer(numeric_data, tmp_path / "split", resume=True, **settings)
    assert resumed.fit().global_step == 16

    whole_train, whole_val = losses(tmp_path / "whole")
    split_train, split_val = losses(tmp_path / "split")
    assert [s for s, _ in whole_train] == list(range(1, 17))
    assert split_train == whole_train  # bit for bit, not approximately
    assert split_val == whole_val  # the interruption logs no evaluation of its own
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")["model_state_dict"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["model_state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_extending_max_steps_on_resume_continues_the_run(numeric_data, tmp_path):
    settings = {"train.schedule": "constant"}
    make_trainer(numeric_data, tmp_path / "whole", **settings, **{"train.max_steps": 12}).fit()
    make_trainer(numeric_data, tmp_path / "split", **settings, **{"train.max_steps": 6}).fit()
    make_trainer(numeric_data, tmp_path / "split", resume=True, **settings, **{"train.max_steps": 12}).fit()
    assert losses(tmp_path / "split")[0] == losses(tmp_path / "whole")[0]


def test_gradient_accumulation_matches_one_big_batch(numeric_data, tmp_path):
    full = make_trainer(numeric_data, tmp_path / "full", **{"train.max_steps": 4})
    full.fit()
    accumulated = make_trainer(numeric_data, tmp_path / "acc", **{"train.max_steps": 4, "train.micro_batch_size": 2})
    accumulated.fit()
    for (_, a), (_, b) in zip(losses(tmp_path / "full")[0], losses(tmp_path / "acc")[0]):
        assert a == pytest.approx(b, abs=1e-5)
    for p, q in zip(full.model.parameters(), accumulated.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)


class NaNAfter(Objective):
    """Wraps an objective so that its loss turns NaN from a given call on."""

    def __init__(self, inner, calls):
        self.inner, self.calls = inner, calls

    def loss(self, model, batch):
        loss, metrics = self.inner.loss(model, batch)
        self.calls -= 1
        return (loss * float("nan") if self.calls < 0 else loss), metrics


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(numeric_data, tmp_path):
    trainer = make_trainer(numeric_data, tmp_path / "run", **{"train.max_steps": 20})
    trainer.objective = NaNAfter(trainer.objective, calls=7)
    with pytest.raises(TrainingStopped, match="loss became nan at step 8"):
        trainer.fit()
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model_state_dict"].values())


def test_early_stopping_with_patience(numeric_data, tmp_path, monkeypatch):
    trainer = make_trainer(numeric_data, tmp_path / "run", **{"train.max_steps": 100, "train.eval_every": 2,
                                                               "train.early_stop_patience": 2})
    values = iter([3.0, 2.0, 2.5, 2.1, 1.0])
    monkeypatch.setattr(trainer, "evaluate", lambda: {"val/loss": next(values)})
    result = trainer.fit()
    assert (result.stop_reason, result.global_step, result.best_metric) == ("early_stopping", 8, 2.0)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["global_step"] == 4


def test_a_saturated_metric_keeps_the_checkpoint_with_the_lower_loss(numeric_data, tmp_path, monkeypatch):
    """Preference accuracy reaches 1.0 and stays: best.pt follows the falling validation loss, while patience
    still counts the evals without a strictly better accuracy."""
    trainer = make_trainer(numeric_data, tmp_path / "run", **{
        "train.max_steps": 100, "train.eval_every": 2, "train.early_stop_patience": 3,
        "train.early_stop_metric": "val/accuracy"})
    values = iter([(0.5, 3.0), (1.0, 2.0), (1.0, 1.0), (1.0, 1.5), (1.0, 0.5)])
    monkeypatch.setattr(trainer, "evaluate", lambda: dict(zip(("val/accuracy", "val/loss"), next(values))))
    result = trainer.fit()
    assert (result.stop_reason, result.global_step, result.best_metric) == ("early_stopping", 10, 1.0)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["global_step"] == 10


def test_epochs_set_the_number_of_steps(numeric_data, tmp_path):
    trainer = make_trainer(numeric_data, tmp_path / "run", **{"train.epochs": 1.0, "train.max_steps": None})
    windows = trainer.train_data.items_per_epoch
    result = trainer.fit()
    assert result.global_step == -(-windows // 8)
    assert 1.0 <= trainer.train_data.epochs_done() < 1.0 + 8 / windows + 1e-9


def test_checkpoint_has_the_design_format_and_loads_weights_only(numeric_data, tmp_path):
    make_trainer(numeric_data, tmp_path / "run", **{"train.max_steps": 5}).fit()
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    for key in ("format_version", "architecture", "model_config", "model_state_dict", "optimizer_state_dict",
                "scaler_state_dict", "train_config", "global_step", "tokens_seen", "best_val_loss", "rng_state",
                "data_state", "tokenizer"):
        assert key in state, key
    assert state["global_step"] == 5 and state["tokens_seen"] == 5 * 8 * 32
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))


def test_run_directory_holds_config_metrics_and_tokenizer(numeric_data, tmp_path):
    make_trainer(numeric_data, tmp_path / "run", **{"train.max_steps": 5, "train.num_samples": 2}).fit()
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "tokenizer/picolm_tokenizer.json"):
        assert (run / name).is_file(), name
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("step", "train/loss", "train/lr", "train/tokens_per_sec", "train/grad_norm", "val/loss",
                 "val/perplexity", "val/accuracy", "val/accuracy/counting", "val/accuracy_after_3/counting"):
        assert name in header, name


def test_fresh_training_refuses_to_overwrite_a_run(numeric_data, tmp_path):
    make_trainer(numeric_data, tmp_path / "run", **{"train.max_steps": 2}).fit()
    before = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(PicolmError, match="already holds a run"):
        make_trainer(numeric_data, tmp_path / "run", **{"train.max_steps": 2})
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == before


def test_resuming_with_another_model_is_refused(numeric_data, tmp_path):
    make_trainer(numeric_data, tmp_path / "run", **{"train.max_steps": 2}).fit()
    with pytest.raises(PicolmError, match="model.n_layer is 3 here but 2 in the checkpoint"):
        make_trainer(numeric_data, tmp_path / "run", resume=True, **{"model.n_layer": 3})


def test_vocabulary_smaller_than_the_tokenizer_is_refused(numeric_data, tmp_path):
    with pytest.raises(PicolmError, match="model.vocab_size"):
        make_trainer(numeric_data, tmp_path / "run", **{"model.vocab_size": 10})


def test_muon_learns_as_fast_as_adamw(numeric_data, tmp_path):
    final = {}
    for optimizer in ("adamw", "muon"):
        make_trainer(numeric_data, tmp_path / optimizer, **{"train.max_steps": 30, "train.optimizer": optimizer}).fit()
        train, _ = losses(tmp_path / optimizer)
        assert train[-1][1] < train[0][1] - 0.3
        final[optimizer] = train[-1][1]
    assert final["muon"] < final["adamw"] + 0.1


def test_newton_schulz_orthogonalises():
    torch.manual_seed(0)
    singular = torch.linalg.svdvals(newton_schulz(torch.randn(64, 32)))
    assert singular.min() > 0.6 and singular.max() < 1.25


def test_lr_schedule_shapes():
    assert lr_factor(0, 10, 0.0, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 0.0, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(50, 10, 0.5, "cosine", 0.1) == pytest.approx(0.55)
    assert lr_factor(99, 10, 1.0, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(50, 10, 0.5, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(50, 10, 0.9, "constant", 0.0) == 1.0


def test_tensorboard_events_are_written(numeric_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    make_trainer(numeric_data, tmp_path / "run", **{"train.max_steps": 3, "train.log_every": 1,
                                                    "log.backends": "tensorboard", "model.differential": True}).fit()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"histograms": 0}).Reload()
    assert "train/loss" in events.Tags()["scalars"]
    assert [e.step for e in events.Histograms("diag/delta_norm")] == [1, 2, 3]


def test_wandb_runs_offline_without_credentials(numeric_data, tmp_path, monkeypatch):
    calls = {}

    class FakeRun:
        def log(self, metrics, step):
            calls.setdefault("steps", []).append(step)

        def finish(self):
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    make_trainer(numeric_data, tmp_path / "run", **{"train.max_steps": 3, "log.backends": "wandb",
                                                     "log.project": "proj"}).fit()
    assert calls["init"]["mode"] == "offline"
    size = f"{12 * 2 * 32 ** 2 / 1e6:.2g}M"
    assert calls["init"]["project"] == "proj" and calls["init"]["name"] == f"gpt-numeric-{size}-v1"
    assert calls["steps"][:3] == [1, 2, 3] and calls["finished"]


def test_block_size_longer_than_the_data_is_refused(numeric_data, tmp_path):
    with pytest.raises(PicolmError, match="train.bin: only .* tokens"):
        make_trainer(numeric_data, tmp_path / "run", **{"model.block_size": 100_000})


def test_token_ids_outside_the_vocabulary_are_refused(numeric_data, tmp_path):
    import shutil

    import numpy as np

    from picolm.data.tokens import read_tokens, write_tokens

    data = tmp_path / "data"
    shutil.copytree(numeric_data, data)
    tokens = np.array(read_tokens(data / "val.bin"))
    tokens[5] = 5000
    write_tokens(data / "val.bin", tokens)
    with pytest.raises(PicolmError, match="val.bin: token id 5000 is outside the model's vocabulary of 103"):
        make_trainer(data, tmp_path / "run")


def test_resuming_a_checkpoint_of_another_architecture_is_refused(numeric_data, tmp_path):
    from picolm.checkpoint import save_checkpoint

    make_trainer(numeric_data, tmp_path / "run", **{"train.max_steps": 2}).fit()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    save_checkpoint({**load_checkpoint(last), "architecture": "sdd"}, last)
    with pytest.raises(PicolmError, match="checkpoint is a 'sdd' model, the config asks for 'gpt'"):
        make_trainer(numeric_data, tmp_path / "run", resume=True)


def test_resume_takes_the_new_learning_rate_and_weight_decay(numeric_data, tmp_path):
    make_trainer(numeric_data, tmp_path / "run", **{"train.max_steps": 3}).fit()
    resumed = make_trainer(numeric_data, tmp_path / "run", resume=True,
                           **{"train.max_steps": 6, "train.lr": 1e-5, "train.weight_decay": 0.5})
    decay_group = resumed.optimizers[0].param_groups[0]
    assert decay_group["base_lr"] == 1e-5 and decay_group["weight_decay"] == 0.5
    assert resumed.optimizers[0].state  # the moments came back
    resumed.fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["train/lr"] for r in rows if r["step"] > 3 and "train/lr" in r) <= 1e-5
    assert 0 < resumed.optimizers[0].param_groups[0]["lr"] <= 1e-5  # what the optimizer really used


def test_resume_with_another_optimizer_is_refused(numeric_data, tmp_path):
    make_trainer(numeric_data, tmp_path / "run", **{"train.max_steps": 2}).fit()
    with pytest.raises(PicolmError, match="train.optimizer: cannot change it when resuming"):
        make_trainer(numeric_data, tmp_path / "run", resume=True, **{"train.optimizer": "muon"})


def test_changing_the_early_stopping_metric_on_resume_starts_its_best_afresh(numeric_data, tmp_path):
    make_trainer(numeric_data, tmp_path / "run", **{"train.max_steps": 5}).fit()
    resumed = make_trainer(numeric_data, tmp_path / "run", resume=True,
                           **{"train.early_stop_metric": "val/accuracy"})
    assert resumed.best_metric is None


@pytest.mark.parametrize(("settings", "field"), [
    ({"train.early_stop_metric": "val/acc"}, "train.early_stop_metric"),
    ({"model.causal": False}, "model.causal"),
])
def test_settings_that_cannot_work_are_refused_before_training(numeric_data, tmp_path, settings, field):
    with pytest.raises(PicolmError, match=field):
        make_trainer(numeric_data, tmp_path / "run", **settings)
    assert not (tmp_path / "run").exists()


def test_a_run_stopped_by_its_time_budget_is_evaluated_at_its_last_step(numeric_data, tmp_path):
    result = make_trainer(numeric_data, tmp_path / "run", **{"train.max_steps": None, "train.max_minutes": 0.02,
                                                              "train.eval_every": 100000}).fit()
    assert result.stop_reason == "max_minutes" and result.global_step > 0
    _, val = losses(tmp_path / "run")
    assert [s for s, _ in val] == [result.global_step]


def test_no_samples_means_none(numeric_data, tmp_path):
    from picolm.data.tokens import read_tokens
    from picolm.eval.samples import document_openings

    tokens = read_tokens(numeric_data / "val.bin")
    assert document_openings(tokens, 0, 0, 4) == []
    assert len(document_openings(tokens, 0, 3, 4)) == 3


def test_checkpoint_weights_are_also_safetensors(numeric_data, tmp_path):
    from safetensors import safe_open

    from picolm.checkpoint import load_weights

    trainer = make_trainer(numeric_data, tmp_path / "run", **{"train.max_steps": 5})
    trainer.fit()
    for name in ("best", "last"):
        state = load_checkpoint(tmp_path / "run" / "checkpoints" / f"{name}.pt")
        weights, metadata = load_weights(tmp_path / "run" / "checkpoints" / f"{name}.safetensors")
        assert weights.keys() == state["model_state_dict"].keys()
        for key, tensor in state["model_state_dict"].items():
            assert torch.equal(weights[key], tensor)
        assert metadata["model_config"] == state["model_config"] and metadata["global_step"] == "5"
    with safe_open(str(tmp_path / "run" / "checkpoints" / "last.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()  # tied to the embedding: stored once
        assert json.loads(f.metadata()["aliases"]) == {"lm_head.weight": "wte.weight"}


def test_a_corrupt_safetensors_file_is_named(tmp_path):
    from picolm.checkpoint import load_weights

    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(PicolmError, match="not a readable safetensors file") as error:
        load_weights(bad)
    assert error.value.path == bad


def test_runs_are_named_architecture_dataset_size_version(numeric_data, tmp_path):
    from picolm.config import load_config

    make_trainer(numeric_data, tmp_path / "a", **{"train.max_steps": 1})
    make_trainer(numeric_data, tmp_path / "b", **{"train.max_steps": 1})
    make_trainer(numeric_data, tmp_path / "c", **{"train.max_steps": 1, "model.position": "rope",
                                                   "model.attention": "linear"})
    named = make_trainer(numeric_data, tmp_path / "d", **{"train.max_steps": 1, "log.run_name": "mine"})
    names = [load_config(tmp_path / run / "config.yaml").log.run_name for run in "abcd"]
    size = f"{12 * 2 * 32 ** 2 / 1e6:.2g}M"  # TINY is no preset: its size is its parameter count
    assert names == [f"gpt-numeric-{size}-v1", f"gpt-numeric-{size}-v2", f"gpt_rope_linear-numeric-{size}-v1", "mine"]
    assert named.config.log.run_name == "mine"
