"""Sparse distribution diffusion (SDD): the k-candidate input, candidate attention and readout, the noise, the loss
and its metrics, the k curriculum, the refusals, the deterministic sampler, and every verb end to end."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY
from picolm.cli import main
from picolm.config import ModelConfig, ObjectiveConfig
from picolm.config import SamplingOptions
from picolm.generate import generate_ids
from picolm.loading import load_model
from picolm.methods.sdd import (SparseDistributionDiffusion, add_noise, clean_state, denoising_metrics, documents, k_at,
                                sample, score, swap_probability, temperature_at)
from picolm.models.gpt import GPT
from picolm.models.sdd import SDD

V, IGNORE = 13, 12  # 12 real tokens and IGNORE


def model(position="learned", k=4, seed=0, **kwargs) -> SDD:
    torch.manual_seed(seed)
    config = ModelConfig(arch="sdd", causal=False, n_layer=2, n_head=2, n_embd=16, block_size=10, vocab_size=V,
                         ignore_id=IGNORE, sdd_k=k, position=position, **kwargs)
    return SDD(config).eval()


def random_state(B=2, L=10, k=4, seed=1, zero_last=False):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(V, (B, L, k), generator=g)
    probs = torch.rand(B, L, k, generator=g) + 0.1
    if zero_last:
        probs[..., -1] = 0.0
    return idx, probs / probs.sum(-1, keepdim=True)


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("position", ["learned", "rope", "none"])
def test_shapes(position):
    m = model(position)
    idx, probs = random_state()
    assert m(idx, probs).shape == (2, 10, V)
    assert m(torch.randint(IGNORE, (3, 7))).shape == (3, 7, V)  # plain ids: a clean state with k = 1
    assert m.hidden_states(idx, probs=probs).shape == (2, 10, 16)


def test_the_input_is_the_probability_weighted_sum_of_candidate_embeddings():
    m = model()
    idx, probs = random_state()
    manual = torch.zeros(2, 10, 16)
    for b in range(2):
        for i in range(10):
            for j in range(4):
                manual[b, i] += probs[b, i, j] * m.wte.weight[idx[b, i, j]]
    torch.testing.assert_close(m.mixture(idx, probs), manual)
    with torch.no_grad():  # silence candidate attention: the blocks' input is then the mixture plus position
        m.candidate_attn.proj.weight.zero_()
        m.candidate_attn.proj.bias.zero_()
    x, _, _ = m.embed_state(idx, probs, torch.arange(10))
    torch.testing.assert_close(x, manual + m.position.wpe.weight[:10])


def test_candidate_attention_norms_follow_model_norm():
    assert isinstance(model().candidate_attn.ln_query, torch.nn.LayerNorm)
    rms = model(norm="rmsnorm")
    assert all(isinstance(n, torch.nn.RMSNorm) for n in (rms.candidate_attn.ln_query, rms.candidate_attn.ln_candidate,
                                                           rms.ln_f, rms.blocks[0].ln_1))


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_a_candidate_with_zero_probability_is_invisible(position):
    m = model(position)
    idx, probs = random_state(zero_last=True)
    out = m(idx, probs)
    other = idx.clone()
    other[..., -1] = (idx[..., -1] + 5) % V  # every zero-weight candidate changed
    torch.testing.assert_close(m(other, probs), out)
    # the same change matters as soon as those candidates carry weight
    weighted = probs.clone()
    weighted[..., -1] = 0.2
    weighted = weighted / weighted.sum(-1, keepdim=True)
    assert not torch.allclose(m(other, weighted), m(idx, weighted), atol=1e-4)


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_the_order_of_a_positions_candidates_does_not_matter(position):
    m = model(position)
    idx, probs = random_state()
    out = m(idx, probs)
    g = torch.Generator().manual_seed(3)
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(20)]).view(2, 10, 4)  # per position
    torch.testing.assert_close(m(idx.gather(-1, order), probs.gather(-1, order)), out, rtol=1e-5, atol=1e-5)


def test_k1_is_a_bidirectional_transformer_over_tokens():
    m = model()
    ids = torch.randint(IGNORE, (2, 10))
    # computed directly: embedding + position, one attention over the tokens themselves (bias log 1 = 0), the
    # blocks, the final norm, the readout (one candidate: weight 1), the tied head
    e = m.wte(ids) + m.position.wpe.weight[:10]
    x = e + m.candidate_attn(e, e, torch.zeros(2, 1, 1, 10))
    for block in m.blocks:
        x = block(x)
    h = m.ln_f(x)
    direct = (h + m.readout.value(m.wte(ids))) @ m.wte.weight.T
    torch.testing.assert_close(m(ids), direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m(ids[..., None], torch.ones(2, 10, 1)), direct, rtol=1e-5, atol=1e-5)
    # with the SDD-only parts silenced it is exactly a bidirectional GPT with the same weights
    with torch.no_grad():
        for p in (*m.candidate_attn.proj.parameters(), *m.readout.value.parameters()):
            p.zero_()
    gpt = GPT(ModelConfig(causal=False, n_layer=2, n_head=2, n_embd=16, block_size=10, vocab_size=V)).eval()
    missing = gpt.load_state_dict(m.state_dict(), strict=False)
    assert not missing.missing_keys
    torch.testing.assert_close(m(ids), gpt(ids), rtol=1e-5, atol=1e-5)


def test_sdd_has_no_kv_cache():
    m = model()
    with pytest.raises(Exception, match="no KV cache"):
        m.new_cache(1)
    with pytest.raises(ValueError, match="bidirectional"):
        SDD(ModelConfig(arch="sdd", causal=True, n_layer=1, n_head=1, n_embd=8, block_size=4, vocab_size=5,
                        ignore_id=4))


# ---------------------------------------------------------------- noise


def test_noise_is_clean_at_t0_and_uniform_at_t1():
    x0 = torch.randint(IGNORE, (4, 10))
    idx, probs = clean_state(x0, 4, V)
    assert torch.equal(idx[..., 0], x0) and torch.equal(probs, F.one_hot(torch.zeros_like(x0), 4).float())
    noisy, noisy_probs, swapped = add_noise(idx, probs, torch.zeros(4), V)
    assert torch.equal(noisy, idx) and torch.equal(noisy_probs, probs) and not swapped.any()
    _, noisy_probs, swapped = add_noise(idx, probs, torch.ones(4), V)
    assert swapped.all() and torch.equal(noisy_probs, torch.full_like(probs, 0.25))


def test_swap_rates_follow_s_of_p_and_t_and_weights_sum_to_one():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(IGNORE, (4, 20000))
    idx, probs = clean_state(x0, 4, V, g)
    probs[..., :2] = 0.5  # candidates of weight 1/2 too
    probs[..., 2:] = 0.0
    probs[0] = F.one_hot(torch.zeros(20000, dtype=torch.long), 4).float()
    t = torch.tensor([0.3, 0.5, 0.7, 0.9])
    _, noisy_probs, swapped = add_noise(idx, probs, t, V, g)
    torch.testing.assert_close(noisy_probs.sum(-1), torch.ones(4, 20000))
    expected = swap_probability(probs, t)
    for row in range(4):
        for p in probs[row].unique():
            where = probs[row] == p
            rate = swapped[row][where].float().mean()
            target = float(t[row]) ** (1 + float(p))
            assert abs(float(rate) - target) < 4 * math.sqrt(target * (1 - target) / int(where.sum())) + 1e-3
            assert torch.allclose(expected[row][where], torch.tensor(target))
    # likelier candidates survive longer
    assert swap_probability(torch.tensor([[[1.0]]]), torch.tensor([0.5])) < swap_probability(
        torch.tensor([[[0.0]]]), torch.tensor([0.5]))


# ---------------------------------------------------------------- documents, loss and metrics


def test_windows_are_cut_into_documents_padded_with_ignore():
    rows = torch.tensor([[5, 6, 0, 7, 8, 9, 0, 3, 4, 2],  # a whole document after the first EOS
                         [5, 0, 7, 8, 9, 3, 4, 2, 1, 3],  # the next document does not end here: kept as it is
                         [5, 6, 7, 8, 9, 3, 4, 2, 1, 3]])  # no EOS
    I = IGNORE
    assert documents(rows, 0, IGNORE).tolist() == [[7, 8, 9, 0, I, I, I, I, I, I], rows[1].tolist(), rows[2].tolist()]


def test_loss_is_the_cross_entropy_of_the_clean_tokens_and_ignore_acc_counts_padding_only():
    m = model()
    x0 = torch.tensor([[3, 4, 5, 0, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE],
                       [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    t = torch.tensor([0.3, 0.8])
    metrics = denoising_metrics(m, x0, t, 4, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same noise, by hand
    idx, probs = clean_state(x0, 4, V, g)
    idx, probs, _ = add_noise(idx, probs, t, V, g)
    logits = m(idx, probs)
    nll = [-(logits[b, i, x0[b, i]] - torch.logsumexp(logits[b, i], 0)) for b in range(2) for i in range(10)]
    torch.testing.assert_close(metrics["loss"][0], torch.stack(nll).sum())
    assert int(metrics["loss"][1]) == 20

    # accuracy on real tokens, ignore_acc on padding only
    logits = torch.zeros(2, 10, V)
    guess = x0.clone()
    guess[0, 4:6] = 1  # two of six padding positions wrong
    guess[1, :3] = IGNORE  # three of fourteen real tokens wrong
    logits.scatter_(-1, guess[..., None], 5.0)
    metrics = score(logits, x0, IGNORE)
    assert [int(v) for v in metrics["ignore_acc"]] == [4, 6]
    assert [int(v) for v in metrics["accuracy"]] == [11, 14]


def test_the_k_curriculum_splits_the_steps_evenly():
    assert [k_at([1, 2, 4, 8], step / 8) for step in range(8)] == [1, 1, 2, 2, 4, 4, 8, 8]
    objective = SparseDistributionDiffusion(ObjectiveConfig(sdd_k_curriculum=[1, 2, 4, 8]))
    seen = []
    for step in range(12):
        objective.set_progress(step / 12)
        seen.append(objective.k)
    assert seen == [1] * 3 + [2] * 3 + [4] * 3 + [8] * 3
    assert SparseDistributionDiffusion(ObjectiveConfig(sdd_k=3)).k == 3


def test_the_objective_reports_k_and_its_metrics():
    m = model().train()
    objective = SparseDistributionDiffusion(ObjectiveConfig(sdd_k=2))
    objective.eos_id = 0
    batch = {"input_ids": torch.tensor([[5, 0, 7, 8, 0, 3, 4, 2, 1, 3]] * 4)}
    loss, metrics = objective.loss(m, batch)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert float(metrics["k"][0] / metrics["k"][1]) == 2
    assert int(metrics["ignore_acc"][1]) == 4 * 7 and int(metrics["accuracy"][1]) == 4 * 3
    assert m.candidate_attn.query.weight.grad is not None and m.readout.key.weight.grad is not None


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("args, field", [
    (["--model.causal", "true"], "model.causal"),
    (["--objective.sdd_k_curriculum", "1,4,2"], "objective.sdd_k_curriculum"),
    (["--objective.sdd_k_curriculum", "0,2"], "objective.sdd_k_curriculum"),
    (["--objective.sdd_k", "0"], "objective.sdd_k"),
    (["--model.vocab_size", "50", "--objective.sdd_k", "64"], "objective.sdd_k"),  # refused as the config is read
    (["--objective.sdd_k", "200"], "objective.sdd_k"),  # refused once the tokenizer gives the vocabulary
    (["--objective.kind", "next_token"], "objective.kind"),
    (["--model.attention", "linear"], "model.attention"),
    (["--model.sdd_k", "3"], "model.sdd_k"),
])
def test_options_that_do_not_fit_sdd_exit_2_naming_the_field(args, field, numeric_data, tmp_path, capsys):
    overrides = ["--model.causal", "false", *args] if args[0] != "--model.causal" else args
    code = main(["train", "--data", str(numeric_data), "--out", str(tmp_path / "run"), "--model.arch", "sdd",
                 *TINY, "--train.max_steps", "1", *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and field in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_sdd_settings_on_a_gpt_are_refused(numeric_data, tmp_path, capsys):
    code = main(["train", "--data", str(numeric_data), "--out", str(tmp_path / "run"), *TINY,
                 "--objective.sdd_k_curriculum", "1,2"])
    assert code == 2 and "objective.sdd_k_curriculum" in capsys.readouterr().err


# ---------------------------------------------------------------- the sampler


def test_the_sampler_decides_the_length_first_keeps_the_prompt_and_takes_steps_forward_passes():
    m = model(k=3)
    calls = []
    m.register_forward_hook(lambda *_: calls.append(1))
    prompts = [[1, 2, 3], [4], []]
    first = sample(m, prompts, 5, steps=5, vocab_size=10, eos_id=0, seed=7)
    assert len(calls) == 5 and first.shape == (3, 5)
    assert torch.equal(sample(m, prompts, 5, steps=5, vocab_size=10, eos_id=0, seed=7), first)
    assert not torch.equal(sample(m, prompts, 5, steps=5, vocab_size=10, eos_id=0, seed=8), first)
    assert bool(((first > 0) & (first < 10)).all())  # tokenizer ids only: never EOS (0), IGNORE or past the vocabulary

    trace = []
    sample(m, prompts, 5, steps=4, vocab_size=10, eos_id=0, seed=7, trace=trace)
    for s, (idx, probs) in enumerate(trace):
        torch.testing.assert_close(probs.sum(-1), torch.ones(3, 10))
        t_next = 1 - (s + 1) / 4
        assert bool((probs[0, 3:8] >= t_next / 3 - 1e-6).all())  # free positions mixed toward uniform by the next t
        # the canvas around them stays clean: the prompt, then EOS, then IGNORE to the end of the context
        assert idx[0, :3, 0].tolist() == [1, 2, 3] and idx[0, 8, 0] == 0 and bool((idx[0, 9:, 0] == IGNORE).all())
        assert idx[1, 0, 0] == 4 and idx[1, 6, 0] == 0 and idx[2, 5, 0] == 0
        fixed = torch.ones(3, 10, dtype=torch.bool)
        for row, start in enumerate((3, 1, 0)):
            fixed[row, start:start + 5] = False
        assert bool((probs[fixed][:, 0] == 1).all())


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_temperature_schedules_run_from_one_and_a_half_to_half_the_temperature(schedule):
    temperatures = [temperature_at(s, 5, 0.8, schedule) for s in range(5)]
    if schedule == "constant":
        assert temperatures == [0.8] * 5
    else:
        assert temperatures[0] == pytest.approx(1.2) and temperatures[-1] == pytest.approx(0.4)
        assert temperatures == sorted(temperatures, reverse=True)
    if schedule == "linear":
        assert np.diff(temperatures) == pytest.approx([-0.2] * 4)


def test_confidence_weighting_and_stochastic_draws():
    m = model(k=3)
    kwargs = dict(vocab_size=10, eos_id=0, seed=3)
    plain, confident = [], []
    sample(m, [[1, 2]], 6, steps=3, trace=plain, **kwargs)
    sample(m, [[1, 2]], 6, steps=3, confidence_weighted=True, trace=confident, **kwargs)
    # a confident position leaves the uniform mixture faster: its top weight is never below the plain one's
    assert bool((confident[0][1][0, 2:8, 0] >= plain[0][1][0, 2:8, 0] - 1e-6).all())
    assert not torch.equal(confident[0][1], plain[0][1])
    deterministic = [sample(m, [[1, 2]], 6, steps=3, temperature=1.0, **kwargs) for _ in range(2)]
    drawn = [sample(m, [[1, 2]], 6, steps=3, temperature=1.0, stochastic=True, **{**kwargs, "seed": s})
             for s in range(4)]
    assert torch.equal(*deterministic)
    assert any(not torch.equal(d, drawn[0]) for d in drawn[1:])
    assert all(bool(((d > 0) & (d < 10)).all()) for d in drawn)


def test_generate_ids_returns_the_requested_length_of_real_tokens():
    m = model(k=2)
    options = SamplingOptions(max_new_tokens=5, steps=3, temperature=0.0)
    rows = generate_ids(m, [[1, 2], [0]], options, eos_id=0, vocab_size=10)
    assert rows == generate_ids(m, [[1, 2], [0]], options, eos_id=0, vocab_size=10)
    assert [len(row) for row in rows] == [5, 5] and all(0 < t < 10 for row in rows for t in row)
    with pytest.raises(Exception, match="repetition-penalty"):
        generate_ids(m, [[1]], SamplingOptions(repetition_penalty=1.2), eos_id=0, vocab_size=10)
    with pytest.raises(Exception, match="--remasking: applies to masked-diffusion models only"):
        generate_ids(m, [[1]], SamplingOptions(remasking="low_confidence"), eos_id=0, vocab_size=10)


# ---------------------------------------------------------------- every verb, end to end


@pytest.mark.slow
def test_train_eval_generate_reload_and_resume_from_the_command_line(numeric_data, tmp_path, capsys):
    run = tmp_path / "sdd"
    args = ["train", "--data", str(numeric_data), "--out", str(run), "--model.arch", "sdd", "--model.causal", "false",
            *TINY, "--objective.sdd_k_curriculum", "1,2,4", "--train.log_every", "1"]
    assert main([*args, "--train.max_steps", "20"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ks = [r["train/k"] for r in rows if "train/k" in r]
    assert ks == sorted(ks) and ks[0] == 1 and ks[-1] == 4
    val = [r for r in rows if "val/loss" in r][-1]  # one vocabulary; its perplexity says it is a denoising one
    assert {"val/loss", "val/accuracy", "val/ignore_acc", "val/perplexity", "val/denoising_perplexity"} <= set(val)
    assert val["val/perplexity"] == val["val/denoising_perplexity"] == pytest.approx(math.exp(val["val/loss"]))
    assert all({"train/accuracy", "train/perplexity", "train/k"} <= set(r) for r in rows if "train/loss" in r)

    loaded = load_model(run)
    assert isinstance(loaded.model, SDD) and loaded.model.config.sdd_k == 4
    assert loaded.model.config.ignore_id == loaded.tokenizer.vocab_size
    ids = torch.randint(loaded.tokenizer.vocab_size, (1, 8))
    torch.testing.assert_close(loaded.model(ids), load_model(run / "checkpoints" / "last.pt").model(ids))

    capsys.readouterr()
    assert main(["eval", str(run), "--json", str(tmp_path / "eval.json")]) == 0
    first = json.loads((tmp_path / "eval.json").read_text())
    assert {"loss", "accuracy", "ignore_acc", "perplexity", "note"} <= set(first)
    assert "not a bound" in first["note"]
    assert main(["eval", str(run), "--json", str(tmp_path / "again.json")]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["loss"] == first["loss"]  # deterministic
    assert main(["eval", str(run), "--metrics", "speed", "--steps", "2"]) == 0
    assert main(["eval", str(run), "--metrics", "kinds"]) == 2

    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "1 2 3", "--max-new-tokens", "8", "--steps", "4"]) == 0
    once = capsys.readouterr().out
    assert main(["generate", str(run), "--prompt", "1 2 3", "--max-new-tokens", "8", "--steps", "4"]) == 0
    assert capsys.readouterr().out == once and once.startswith("1 2 3") and len(once.split()) == 3 + 8
    assert main(["generate", str(run), "--prompt", "1 2 3", "--remasking", "low_confidence"]) == 2

    assert main(["train", "--resume", str(run), "--train.max_steps", "30"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 30
    assert main(["analyze", str(run), "--what", "pca,attention"]) == 0
