"""Masked diffusion (MDLM): the loss against a hand computation, the noise draws, the NELBO evaluation and its
bound, the sampler (schedule, re-masking, blocks, seeds, float64 Gumbel noise), every verb on a tiny run,
resume, and the settings that are refused."""

import json
import math
import types

import numpy as np
import pytest
import torch

from picolm.cli import main
from picolm.config import ModelConfig, ObjectiveConfig, build_config
from picolm.errors import PicolmError
from picolm.config import SamplingOptions
from picolm.generate import generate_ids
from picolm.loading import load_model
from picolm.methods import sampling
from picolm.methods.mdlm import (MaskedDiffusion, evaluate_nelbo, mask_positions, sample, unmask_counts,
                                 weighted_nll)
from picolm.methods.noise import antithetic_times
from picolm.methods.sampling import gumbel_max
from picolm.models.gpt import GPT
from picolm.train.trainer import Trainer
from conftest import TINY

DIFFUSION = ["--objective.kind", "mdlm", "--model.causal", "false"]


def diffusion_model(vocab_size=11, block_size=32, seed=0) -> GPT:
    """A tiny bidirectional GPT whose last id is the mask token, with weights large enough to matter."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=block_size, vocab_size=vocab_size,
                            causal=False, mask_id=vocab_size - 1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def uniform_model(vocab_size=11, block_size=16) -> GPT:
    """Predicts every token with probability 1 / (vocab_size - 1): the head is all zeros."""
    model = diffusion_model(vocab_size, block_size)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model


class Scripted(torch.nn.Module):
    """A stand-in diffusion model: the same logits (L, V) for the L positions after the prompt whatever it reads;
    it keeps a copy of every input it is given."""

    def __init__(self, logits: torch.Tensor, block_size: int = 64):
        super().__init__()
        self.logits = logits
        self.config = types.SimpleNamespace(mask_id=logits.shape[-1], block_size=block_size, causal=False)
        self.inputs = []

    def forward(self, idx, positions=None, attn_mask=None):
        self.inputs.append(idx.clone())
        out = torch.zeros(*idx.shape, self.logits.shape[-1])
        out[:, -len(self.logits):] = self.logits
        return out

    def reveal_order(self, final: torch.Tensor) -> list[list[int]]:
        """Per step, the canvas positions (after the prompt) it revealed in row 0."""
        canvases = [x[0, -len(self.logits):] for x in self.inputs] + [final[0]]
        mask_id = self.config.mask_id
        return [torch.nonzero((a == mask_id) & (b != mask_id)).flatten().tolist()
                for a, b in zip(canvases, canvases[1:])]


# -- the loss -------------------------------------------------------------------------------------

X0 = torch.tensor([[1, 4, 2, 9, 0, 3], [5, 5, 7, 1, 8, 2]])
T = torch.tensor([0.25, 0.8])
MASKED = torch.tensor([[0, 1, 0, 1, 0, 0], [1, 1, 0, 1, 1, 1]], dtype=torch.bool)


def test_a_uniform_model_has_the_hand_computed_loss():
    # every masked token costs log(10); row 1 has 2 masked at t = 1/4, row 2 has 5 at t = 0.8
    expected = math.log(10) * (2 / 0.25 + 5 / 0.8) / 12
    with torch.no_grad():
        loss = weighted_nll(uniform_model(), X0, T, MASKED)[0] / X0.numel()
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_the_loss_is_the_weighted_cross_entropy_of_the_masked_tokens(monkeypatch):
    model = diffusion_model()
    x_t = X0.masked_fill(MASKED, 10)
    with torch.no_grad():
        logits = model(x_t).double()  # the head has no row for the mask token
    assert logits.shape[-1] == 10
    expected = 0.0
    for row, column in MASKED.nonzero().tolist():
        z = logits[row, column]
        expected += (math.log(z.exp().sum()) - float(z[X0[row, column]])) / float(T[row])
    expected /= X0.numel()
    nll, hits = weighted_nll(model, X0, T, MASKED)
    assert float(nll.detach()) / X0.numel() == pytest.approx(expected, rel=1e-5)
    argmax_hits = sum(int(logits[row, column].argmax() == X0[row, column]) for row, column in MASKED.nonzero().tolist())
    assert int(hits) == argmax_hits

    objective = MaskedDiffusion(ObjectiveConfig(kind="mdlm"))
    monkeypatch.setattr("picolm.methods.mdlm.antithetic_times", lambda n, eps, device=None: T)
    monkeypatch.setattr("picolm.methods.mdlm.mask_positions", lambda x0, t: MASKED)
    loss, metrics = objective.loss(model, {"input_ids": X0})
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    total, count = metrics["loss"]
    assert int(count) == 12 and float(total / count) == pytest.approx(expected, rel=1e-5)
    assert [int(v) for v in metrics["accuracy"]] == [argmax_hits, int(MASKED.sum())]


@torch.no_grad()
def test_only_masked_tokens_count():
    model = diffusion_model()
    x_other = X0.clone()
    x_other[~MASKED] = (X0[~MASKED] + 1) % 10  # changes only what the model reads at unmasked positions
    shifted = weighted_nll(model, x_other, T, MASKED)[0]
    assert float(weighted_nll(model, X0, T, torch.zeros_like(MASKED))[0]) == 0.0
    # bidirectional: the context counts
    assert float(shifted) != pytest.approx(float(weighted_nll(model, X0, T, MASKED)[0]))


@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
def test_antithetic_times_put_one_draw_in_each_stratum(batch_size):
    eps = 1e-3
    for seed in range(20):
        t = antithetic_times(batch_size, eps, torch.Generator().manual_seed(seed))
        assert t.shape == (batch_size,) and bool(((t >= eps) & (t <= 1)).all())
        strata = ((t - eps) / (1 - eps) * batch_size).floor().long().sort().values
        assert strata.tolist() == list(range(batch_size))
        gaps = t.sort().values.diff()
        torch.testing.assert_close(gaps, torch.full_like(gaps, (1 - eps) / batch_size))


def test_each_token_is_masked_with_probability_t():
    t = torch.tensor([0.05, 0.3, 0.6, 0.95])
    masked = mask_positions(torch.zeros(4, 40_000, dtype=torch.long), t, torch.Generator().manual_seed(0))
    torch.testing.assert_close(masked.float().mean(1), t, atol=0.01, rtol=0)


# -- evaluation -----------------------------------------------------------------------------------

def test_evaluation_is_repeatable_and_its_bound_is_exp_of_the_loss():
    model = diffusion_model()
    tokens = np.random.default_rng(0).integers(0, 10, 32 * 40 + 1)
    model.train()
    first = evaluate_nelbo(model, tokens, 32, batch_size=8)
    assert model.training  # its mode comes back
    assert evaluate_nelbo(model, tokens, 32, batch_size=8) == first
    assert first["perplexity_bound"] == pytest.approx(math.exp(first["loss"]))
    assert first["tokens"] == 32 * 40 and 0 <= first["masked_accuracy"] <= 1
    assert evaluate_nelbo(model, tokens, 32, seed=1)["loss"] != first["loss"]


def test_a_uniform_model_is_bounded_by_its_true_perplexity():
    """Predicting uniformly over the 10 real tokens, a model's perplexity is 10 and its NELBO is log(10) in
    expectation: the bound is tight for it, so the estimate must land there."""
    tokens = np.random.default_rng(1).integers(0, 10, 16 * 1000 + 1)
    result = evaluate_nelbo(uniform_model(), tokens, 16, batch_size=64)
    assert result["loss"] == pytest.approx(math.log(10), rel=0.05)
    assert result["perplexity_bound"] == pytest.approx(10, rel=0.12)


# -- the sampler ----------------------------------------------------------------------------------

@pytest.mark.parametrize("masked, steps", [(12, 12), (12, 5), (7, 3), (100, 7), (5, 1)])
def test_the_unmasking_schedule_is_linear_in_t(masked, steps):
    counts = unmask_counts(masked, steps)
    assert len(counts) == steps and sum(counts) == masked and min(counts) >= 1
    remaining = masked - np.cumsum(counts)
    for s, left in enumerate(remaining):
        assert abs(left - masked * (1 - (s + 1) / steps)) < 1  # masked fraction = t, from 1 down to 0 linearly


@pytest.mark.parametrize("length, steps, block_length, calls", [(12, None, None, 12), (12, 5, None, 5),
                                                               (12, 30, None, 12), (12, 6, 4, 6), (12, 7, 5, 7)])
def test_one_forward_pass_per_step(length, steps, block_length, calls):
    stub = Scripted(torch.randn(length, 9))
    out = sample(stub, [[1, 2, 3]], length, steps, temperature=1.0, block_length=block_length)
    assert len(stub.inputs) == calls
    assert out.shape == (1, length) and not bool((out == 9).any())


def test_prompts_never_change_and_no_mask_is_left():
    model = diffusion_model()
    prompts = [[1, 2, 3, 4, 5], [6, 7]]
    calls = []
    original = model.forward
    model.forward = lambda x, **kw: (calls.append(x.clone()), original(x, **kw))[1]
    out = sample(model, prompts, 10, steps=4, remasking="low_confidence", pad_id=0)
    assert out.shape == (2, 10) and not bool((out == 10).any()) and bool((out < 10).all())
    for x in calls:  # left-padded to the longest prompt
        assert x[0, :5].tolist() == prompts[0] and x[1, 3:5].tolist() == prompts[1]
    kept = [x[:, 5:] != 10 for x in calls]
    for before, after, x_before, x_after in zip(kept, kept[1:], calls, calls[1:]):
        assert bool((before <= after).all())  # revealed stays revealed
        assert torch.equal(x_before[:, 5:][before], x_after[:, 5:][before])  # and unchanged


def test_low_confidence_reveals_the_most_probable_positions_first():
    confidence = torch.tensor([2.0, 5.0, 1.0, 4.0, 3.0, 0.5])
    logits = torch.zeros(6, 7)
    logits[torch.arange(6), torch.arange(6)] = confidence
    stub = Scripted(logits)
    out = sample(stub, [[3]], 6, steps=6, temperature=0, remasking="low_confidence")
    assert stub.reveal_order(out) == [[1], [3], [4], [0], [2], [5]]
    assert out[0].tolist() == list(range(6))

    stub = Scripted(logits)
    out = sample(stub, [[3]], 6, steps=3, temperature=0, remasking="low_confidence")
    assert [sorted(step) for step in stub.reveal_order(out)] == [[1, 3], [0, 4], [2, 5]]


def test_without_remasking_the_order_is_random_and_seeded():
    logits = torch.zeros(16, 7)
    logits[torch.arange(16), torch.arange(16) % 7] = torch.linspace(5, 0, 16)
    orders = []
    for seed in (0, 0, 1):
        stub = Scripted(logits)
        orders.append(stub.reveal_order(sample(stub, [[3]], 16, steps=16, temperature=0, seed=seed)))
    assert orders[0] == orders[1] != orders[2]
    assert orders[0] != [[i] for i in range(16)]


def test_semi_autoregressive_blocks_fill_left_to_right():
    stub = Scripted(torch.randn(12, 9))
    out = sample(stub, [[1, 2]], 12, steps=6, block_length=4, remasking="low_confidence")
    for step, x in enumerate(stub.inputs):
        canvas = x[0, 2:]
        block = step // 2  # two steps for each block of four
        assert bool((canvas[:4 * block] != 9).all()), step  # earlier blocks are complete
        assert bool((canvas[4 * (block + 1):] == 9).all()), step  # later blocks have not started
    assert [len(r) for r in stub.reveal_order(out)] == [2] * 6
    with pytest.raises(PicolmError, match="--steps: needs at least one step per block"):
        sample(stub, [[1]], 12, steps=2, block_length=4)


def test_sampling_is_seeded():
    model = diffusion_model()
    runs = [sample(model, [[1, 2, 3]], 12, steps=6, seed=seed) for seed in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("remasking", ["none", "low_confidence"])
@pytest.mark.parametrize("block_length", [None, 3])
def test_temperature_zero_takes_the_argmax(remasking, block_length):
    logits = torch.randn(9, 8, generator=torch.Generator().manual_seed(2))
    out = sample(Scripted(logits), [[1]], 9, steps=4, temperature=0, remasking=remasking,
                 block_length=block_length, seed=None)
    assert out[0].tolist() == logits.argmax(-1).tolist()


def test_gumbel_max_samples_the_softmax_with_float64_noise(monkeypatch):
    logits = torch.tensor([2.0, 0.0, -1.0, 1.0]).expand(100_000, 4)
    seen = []
    real_rand = torch.rand

    def spy(*args, **kwargs):
        seen.append(kwargs.get("dtype"))
        return real_rand(*args, **kwargs)

    monkeypatch.setattr(sampling.torch, "rand", spy)
    draws = gumbel_max(logits, torch.Generator().manual_seed(0))
    monkeypatch.undo()
    assert seen == [torch.float64]
    frequencies = torch.bincount(draws, minlength=4).double() / len(draws)
    torch.testing.assert_close(frequencies, logits[0].double().softmax(-1), atol=0.005, rtol=0)


def test_generate_ids_cuts_at_eos_and_refuses_what_does_not_apply():
    model = diffusion_model()
    rows = generate_ids(model, [[1, 2], [3]], SamplingOptions(max_new_tokens=20, temperature=1.0), eos_id=0)
    assert all(0 not in row and 10 not in row and len(row) <= 20 for row in rows)
    with pytest.raises(PicolmError, match="--repetition-penalty"):
        generate_ids(model, [[1]], SamplingOptions(repetition_penalty=1.3))
    ar = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=11))
    for options in (SamplingOptions(steps=4), SamplingOptions(remasking="low_confidence"),
                    SamplingOptions(block_length=4)):
        with pytest.raises(PicolmError, match="applies to .*diffusion models.* only; this model decodes left to right"):
            generate_ids(ar, [[1]], options)


# -- every verb on a tiny run ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def diffusion_run(numeric_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "mdlm"
    assert main(["train", "--data", str(numeric_data), "--out", str(run), "--train.max_steps", "20", *TINY,
                 *DIFFUSION]) == 0
    return run


def test_training_adds_a_mask_token_and_logs_the_bound(diffusion_run, numeric_data):
    import yaml

    model = yaml.safe_load((diffusion_run / "config.yaml").read_text())["model"]
    vocab = json.loads((numeric_data / "meta.json").read_text())["vocab_size"]
    assert model["vocab_size"] == vocab + 1 and model["mask_id"] == vocab and model["causal"] is False
    rows = [json.loads(line) for line in (diffusion_run / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in rows if "val/perplexity_bound" in r]
    assert [r["step"] for r in evaluations] == [10, 20]
    for r in evaluations:  # one vocabulary: its perplexity is the ELBO bound, also kept under its own name
        assert r["val/perplexity_bound"] == r["val/perplexity"] == pytest.approx(math.exp(r["val/loss"]))
        assert 0 <= r["val/masked_accuracy"] == r["val/accuracy"] <= 1
    trained = [r for r in rows if "train/loss" in r]
    assert trained and all({"train/accuracy", "train/perplexity", "train/perplexity_bound", "train/lr",
                            "train/tokens_per_sec"} <= set(r) for r in trained)
    assert "[sample]" in (diffusion_run / "samples.txt").read_text()


def test_eval_reports_the_bound_and_says_so(diffusion_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", str(diffusion_run), "--max-windows", "64", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["perplexity_bound"] == result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert 0 <= result["masked_accuracy"] == result["accuracy"] <= 1
    assert "upper bound" in result["note"]
    assert "upper bound" in capsys.readouterr().out
    assert main(["eval", str(diffusion_run), "--max-windows", "64", "--json", str(tmp_path / "again.json")]) == 0
    assert json.loads((tmp_path / "again.json").read_text()) == result
    assert main(["eval", str(diffusion_run), "--metrics", "generation", "--samples", "4",
                 "--max-new-tokens", "8"]) == 0
    assert "generation/distinct_1" in capsys.readouterr().out


@pytest.mark.parametrize("metric", ["kinds", "length", "preference"])
def test_eval_refuses_metrics_that_decode_left_to_right(diffusion_run, metric, capsys):
    assert main(["eval", str(diffusion_run), "--metrics", metric]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"--metrics: '{metric}' is not for masked diffusion models (mdlm)" in lines[0]


def test_eval_measures_the_speed_of_a_diffusion_model_at_its_steps(diffusion_run, tmp_path):
    out = tmp_path / "speed.json"
    assert main(["eval", str(diffusion_run), "--metrics", "speed", "--steps", "4", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["speed/denoising_steps"] == 4
    assert result["speed/tokens_per_second_batch_1"] > 0 and result["speed/tokens_per_second_batch_8"] > 0


def test_generate_writes_numbers_after_the_prompt(diffusion_run, capsys):
    args = ["generate", str(diffusion_run), "--prompt", "3 4 5", "--max-new-tokens", "12"]
    assert main(args) == 0
    assert main(args + ["--steps", "4", "--remasking", "low_confidence", "--block-length", "6"]) == 0
    assert main(args + ["--steps", "4", "--remasking", "low_confidence", "--block-length", "6"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    tokenizer = load_model(diffusion_run).tokenizer
    for line in lines:  # whole numbers of the vocabulary, the first new one apart from the prompt's last
        assert line.split()[:3] == ["3", "4", "5"] and len(tokenizer.encode(line)) <= 3 + 12
    assert lines[1] == lines[2]


def test_chat_compare_and_analyze_take_a_diffusion_run(diffusion_run, trained_run, tmp_path, monkeypatch, capsys):
    messages = iter(["3 4 5", "7 8", "exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(messages))
    assert main(["chat", str(diffusion_run), "--chats-dir", str(tmp_path / "chats"), "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.count("model> ") == 2
    transcript = next((tmp_path / "chats").glob("*/transcript.txt")).read_text()
    assert transcript.count("you> ") == 2

    assert main(["compare", str(diffusion_run), str(trained_run), "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    assert "val/perplexity_bound" in table and "val/perplexity |" in table and "upper bound" in table

    assert main(["analyze", str(diffusion_run), "--what", "pca,attention", "--out", str(tmp_path / "an")]) == 0
    assert (tmp_path / "an" / "attention.png").stat().st_size > 1000


def test_resume_continues_a_diffusion_run_bit_for_bit(numeric_data, tmp_path):
    """The objective draws t and the masks from the global generator, saved in the checkpoint; evaluation uses
    its own, so the extra evaluation where the first half stops changes nothing."""
    settings = {"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 32,
                "train.batch_size": 8, "train.eval_every": 5, "train.eval_batches": 2, "train.log_every": 1,
                "train.schedule": "constant", "model.dropout": 0.1, "log.progress": False, "train.num_samples": 0,
                "objective.kind": "mdlm", "model.causal": False, "data.path": str(numeric_data)}

    def fit(run, steps, resume=False):
        config = build_config(None, {**settings, "train.max_steps": steps})
        return Trainer(config, tmp_path / run, resume=resume, log=lambda *a: None).fit()

    def logged(run):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r.get("train/loss"), r.get("val/loss")) for r in rows if r["step"] != 6]

    fit("whole", 12)
    fit("split", 6)
    assert fit("split", 12, resume=True).global_step == 12
    assert logged("split") == logged("whole")
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=False)["model_state_dict"]
    b = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=False)["model_state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- refusals -------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--objective.kind", "mdlm"], "model.causal: masked diffusion needs a bidirectional model"),
    ([*DIFFUSION, "--model.attention", "linear"], "model.attention: linear attention is built in its causal"),
    (["--model.mask_id", "5"], "model.mask_id: belongs to masked diffusion (objective.kind mdlm)"),
    ([*DIFFUSION, "--objective.eps", "0"], "objective.eps: must be in (0, 1)"),
])
def test_settings_that_do_not_fit_are_refused_when_read(numeric_data, tmp_path, args, message, capsys):
    assert main(["train", "--data", str(numeric_data), "--out", str(tmp_path / "run"), *TINY, *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", [["--steps", "4"], ["--remasking", "low_confidence"], ["--block-length", "4"]])
@pytest.mark.parametrize("verb", ["generate", "chat", "eval"])
def test_diffusion_sampling_options_are_refused_for_a_left_to_right_model(trained_run, verb, option, tmp_path,
                                                                          monkeypatch, capsys):
    monkeypatch.setattr("builtins.input", lambda prompt="": pytest.fail("asked for a message"))
    extra = {"generate": ["--prompt", "3 4"], "chat": ["--chats-dir", str(tmp_path)], "eval": []}[verb]
    assert main([verb, str(trained_run), *extra, *option]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{option[0]}: applies to" in lines[0] and "decodes left to right" in lines[0]


def test_a_diffusion_run_is_no_starting_point_for_left_to_right_training(diffusion_run, trained_run, numeric_data,
                                                                         tmp_path, capsys):
    assert main(["train", "--data", str(numeric_data), "--out", str(tmp_path / "a"), "--init-from",
                 str(diffusion_run), "--train.max_steps", "1", "--log.progress", "false",
                 "--objective.kind", "next_token"]) == 2
    error = capsys.readouterr().err
    assert "train.init_from: this masked diffusion model trains on only with objective.kind mdlm" in error
    assert main(["train", "--data", str(numeric_data), "--out", str(tmp_path / "b"), "--init-from",
                 str(trained_run), "--train.max_steps", "1", "--log.progress", "false", *DIFFUSION]) == 2
    assert "train.init_from: masked diffusion starts from scratch" in capsys.readouterr().err


def test_a_run_written_before_families_recorded_their_kind_resumes_as_its_family(diffusion_run, tmp_path, capsys):
    """Runs from before picolm/methods stored `objective.kind: auto` (or the user's kind) and checkpoints without
    a `task`: the model's mask token still makes it an MDLM run, for resume, eval and generate."""
    import shutil

    import yaml

    old = tmp_path / "old"
    shutil.copytree(diffusion_run, old)
    config = yaml.safe_load((old / "config.yaml").read_text())
    config["objective"]["kind"] = "auto"
    (old / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in ("best.pt", "last.pt"):
        state = torch.load(old / "checkpoints" / name, weights_only=True)
        state.pop("task")
        state["train_config"]["objective"]["kind"] = "auto"
        torch.save(state, old / "checkpoints" / name)
    assert main(["train", "--resume", str(old), "--train.max_steps", "25"]) == 0
    assert yaml.safe_load((old / "config.yaml").read_text())["objective"]["kind"] == "mdlm"
    rows = [json.loads(line) for line in (old / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 25 and "val/perplexity_bound" in rows[-1]
    capsys.readouterr()
    assert main(["eval", str(old), "--max-windows", "8"]) == 0
    assert "upper bound" in capsys.readouterr().out
