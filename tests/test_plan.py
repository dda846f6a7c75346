"""`picolm train --dry-run`: parameter counts, memory estimates and tokens per step before anything is allocated."""

import pytest
import torch

from picolm.cli import main
from picolm.config import build_config
from picolm.models.build import build_model
from picolm.train.plan import estimate


def saved_activation_bytes(config) -> int:
    """What a real CPU forward keeps for backward: the bytes of every distinct tensor autograd saves."""
    torch.manual_seed(0)
    model = build_model(config.model).train()
    model.grad_checkpointing = config.train.grad_checkpointing
    saved = {}

    def pack(t):
        saved[(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))] = t.numel() * t.element_size()
        return t

    idx = torch.randint(0, config.model.vocab_size, (config.train.batch_size, config.model.block_size))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, targets=idx)
    return sum(saved.values())


@pytest.mark.parametrize("settings", [{}, {"model.mlp": "swiglu"}, {"model.attention": "linear"},
                                      {"model.dropout": 0.1}, {"model.position": "rope", "model.n_embd": 256},
                                      {"train.grad_checkpointing": True}])
def test_activation_estimate_is_within_a_quarter_of_a_real_forward(settings):
    config = build_config(None, {"model.n_layer": 4, "model.n_head": 4, "model.n_embd": 128, "model.block_size": 128,
                                 "model.vocab_size": 512, "train.batch_size": 4, "train.max_steps": 1,
                                 "train.precision": "fp32", **settings})
    measured = saved_activation_bytes(config)
    assert estimate(config).activation_bytes == pytest.approx(measured, rel=0.25)


def test_parameters_and_optimizer_state_match_a_real_model_after_a_step():
    config = build_config(None, {"model.preset": "tiny", "model.vocab_size": 300, "train.max_steps": 1,
                                 "train.batch_size": 8})
    plan = estimate(config)
    model = build_model(config.model)
    assert plan.parameters == model.num_params(exclude_position=False)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 8, dtype=torch.long)).sum().backward()
    optimizer.step()
    moments = sum(v.numel() * v.element_size() for s in optimizer.state.values() for k, v in s.items() if k != "step")
    assert plan.optimizer_bytes == moments
    assert plan.tokens_per_step == 8 * 256


def test_fsdp_divides_the_model_state_over_the_processes():
    settings = {"model.preset": "small", "model.vocab_size": 1000, "train.max_steps": 1, "train.batch_size": 8}
    one = estimate(build_config(None, settings), world_size=1)
    four = estimate(build_config(None, {**settings, "train.parallel": "fsdp"}), world_size=4)
    assert four.optimizer_bytes == one.optimizer_bytes // 4 and four.weight_bytes == one.weight_bytes // 4
    assert four.micro_batch == 2 and four.tokens_per_step == one.tokens_per_step


def test_dry_run_of_xl_prints_the_plan_and_writes_nothing(numeric_data, tmp_path, capsys):
    code = main(["train", "--data", str(numeric_data), "--out", str(tmp_path / "run"), "--model.preset", "xl",
                 "--train.max_steps", "10", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "24 layers x 1024 wide" in out and "tokens per step" in out and "activations" in out
    millions = float(out.split("parameters (")[1].split("M")[0])
    assert 290 < millions < 320  # ~300M (the numeric vocabulary is small)
    assert not (tmp_path / "run").exists()
