"""Differential input embeddings: the blocks see e_t - e_{t-1}, the base embedding comes back before the head."""

import json

import pytest
import torch

from picolm.config import ModelConfig
from picolm.config import SamplingOptions
from picolm.generate import generate_ids
from picolm.models.gpt import GPT


def model_with(position="none", **changes):
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=32, vocab_size=19, position=position,
                           differential=True, **changes)).eval()


def test_the_blocks_input_is_the_embedding_delta():
    model = model_with()
    ids = torch.tensor([[4, 7, 7, 2, 9]])
    x, _, tokens = model.embed(ids, torch.arange(5))
    e = model.wte.weight[ids[0]]
    expected = torch.cat([e[:1], e[1:] - e[:-1]])
    torch.testing.assert_close(x[0], expected)
    assert torch.all(x[0, 2] == 0)  # a repeated token has no delta
    torch.testing.assert_close(tokens[0], e)


def test_each_packed_sequence_starts_from_zero():
    model = model_with()
    ids = torch.tensor([[4, 7, 2, 9, 5]])
    positions = torch.tensor([[0, 1, 2, 0, 1]])  # two sequences in one row
    x, _, _ = model.embed(ids, positions)
    torch.testing.assert_close(x[0, 3], model.wte.weight[9])


@pytest.mark.parametrize("position", ["none", "learned", "rope"])
def test_the_base_embedding_is_added_back_before_the_final_norm(position):
    model = model_with(position)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9]])
    x, rotary, tokens = model.embed(ids, torch.arange(6))
    for block in model.blocks:
        x = block(x, rotary)
    torch.testing.assert_close(model.hidden_states(ids), model.ln_f(x + tokens))


@pytest.mark.parametrize("position", ["none", "learned", "rope"])
def test_cached_generation_equals_recomputing(position):
    model = model_with(position)
    prompt = [3, 1, 4, 1, 5]
    ids = list(prompt)
    for _ in range(12):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert generate_ids(model, [prompt], SamplingOptions(max_new_tokens=12, temperature=0.0))[0] == ids[5:]


def test_left_padded_batches_match_single_prompts():
    model = model_with("learned")
    prompts = [[3, 1, 4, 1, 5, 9, 2], [8, 8], [6]]
    options = SamplingOptions(max_new_tokens=8, temperature=0.0)
    assert generate_ids(model, prompts, options) == [generate_ids(model, [p], options)[0] for p in prompts]


def test_training_logs_the_delta_norms(numeric_data, tmp_path):
    from conftest import TINY

    from picolm.cli import main

    run = tmp_path / "differential"
    assert main(["train", "--data", str(numeric_data), "--out", str(run), "--train.max_steps", "10",
                 "--train.log_every", "5", "--model.differential", "true", "--model.position", "rope", *TINY]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "diag/delta_norm_mean" in r]
    assert [r["step"] for r in logged] == [5, 10]
    for r in logged:
        assert 0 <= r["diag/delta_norm_min"] < r["diag/delta_norm_mean"] < r["diag/delta_norm_max"]
        assert r["diag/delta_norm_std"] > 0
    histograms = [json.loads(line) for line in (run / "histograms.jsonl").read_text().splitlines()]
    assert [h["step"] for h in histograms] == [5, 10]
    assert sum(histograms[0]["counts"]) == 8 * 32  # every token of the batch (TINY: batch 8, block 32)
    assert len(histograms[0]["edges"]) == len(histograms[0]["counts"]) + 1


def test_models_without_differential_inputs_log_no_deltas(trained_run):
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert not any("diag/delta_norm_mean" in r for r in rows)
    assert not (trained_run / "histograms.jsonl").exists()
