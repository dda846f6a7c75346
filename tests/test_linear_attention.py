"""Linear attention: the quadratic, chunked and recurrent forms agree, and generation through the recurrent state
equals recomputing the whole sequence."""

import pytest
import torch

from picolm.config import ModelConfig
from picolm.config import SamplingOptions
from picolm.generate import generate_ids
from picolm.models.gpt import GPT
from picolm.models.linear_attention import (FEATURE_MAPS, Features, RecurrentState, chunked_form, quadratic_form,
                                            recurrent_step)
from picolm.models.position import RotaryPosition


def random_features(T=37, rope=False, feature_map="elu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, T, 8, generator=g) for _ in range(3))
    rotary = RotaryPosition(ModelConfig(n_embd=24, n_head=3)).rotary(torch.arange(T)) if rope else None
    return q, k, v, rotary, FEATURE_MAPS[feature_map]


def reference(q, k, v, rotary, phi):
    """Token by token from the definition, in float64."""
    q, k, v = q.double(), k.double(), v.double()
    fq, fk = phi(q), phi(k)
    nq, nk = (fq, fk) if rotary is None else (_rotate(fq, rotary), _rotate(fk, rotary))
    out = torch.zeros_like(v)
    for t in range(q.shape[2]):
        weights = (nq[:, :, t:t + 1] * nk[:, :, :t + 1]).sum(-1)
        norm = (fq[:, :, t:t + 1] * fk[:, :, :t + 1]).sum(-1).sum(-1, keepdim=True)
        out[:, :, t] = (weights[..., None] * v[:, :, :t + 1]).sum(2) / (norm + 1e-6)
    return out


def _rotate(x, rotary):
    cos, sin = (a.double() for a in rotary)
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("feature_map", ["elu", "relu"])
@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
def test_quadratic_chunked_and_recurrent_forms_agree(rope, feature_map, chunk_size):
    q, k, v, rotary, phi = random_features(rope=rope, feature_map=feature_map)
    expected = reference(q, k, v, rotary, phi).float()
    causal = torch.ones(37, 37, dtype=torch.bool).tril()
    quadratic, _ = quadratic_form(Features(q, k, v, rotary, phi), causal)
    chunked, state, normalizer = chunked_form(Features(q, k, v, rotary, phi), chunk_size)
    cache = RecurrentState(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8))
    steps = []
    for t in range(37):
        angles = None if rotary is None else tuple(a[t:t + 1] for a in rotary)
        steps.append(recurrent_step(Features(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], angles, phi), cache))
    recurrent = torch.cat(steps, dim=2)
    for result in (quadratic, chunked, recurrent):
        torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, cache.state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(normalizer, cache.normalizer, rtol=1e-5, atol=1e-5)


def test_the_chunked_form_continues_from_a_state():
    q, k, v, rotary, phi = random_features(T=40, rope=True)
    whole, _, _ = chunked_form(Features(q, k, v, rotary, phi), 8)
    first, state, normalizer = chunked_form(Features(q[:, :, :17], k[:, :, :17], v[:, :, :17],
                                                     tuple(a[:17] for a in rotary), phi), 8)
    rest, _, _ = chunked_form(Features(q[:, :, 17:], k[:, :, 17:], v[:, :, 17:], tuple(a[17:] for a in rotary), phi),
                              8, state, normalizer)
    torch.testing.assert_close(torch.cat([first, rest], dim=2), whole, rtol=1e-5, atol=1e-5)


def test_kernel_weights_are_causal_and_normalised():
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=11, attention="linear",
                            position="learned"))
    x = torch.randn(1, 9, 16)
    weights = model.blocks[0].attn.weights(x)
    assert weights.shape == (1, 2, 9, 9)
    assert torch.all(weights.triu(1) == 0) and torch.all(weights >= 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 9), rtol=1e-5, atol=1e-5)


def linear_model(**changes):
    torch.manual_seed(0)
    settings = dict(n_layer=2, n_head=2, n_embd=32, block_size=48, vocab_size=23, attention="linear",
                    position="rope", chunk_size=8)
    return GPT(ModelConfig(**{**settings, **changes})).eval()


@pytest.mark.parametrize("position", ["rope", "learned", "none"])
def test_a_model_forward_matches_the_quadratic_reference(position):
    model = linear_model(position=position)
    ids = torch.randint(0, 23, (2, 30))
    chunked = model(ids)
    mask = torch.ones(2, 1, 30, 30, dtype=torch.bool).tril()  # the explicit mask takes the quadratic form
    torch.testing.assert_close(model(ids, attn_mask=mask), chunked, rtol=1e-5, atol=1e-5)


def recompute_greedy(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids[-model.config.block_size:]]))[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("differential", [False, True])
def test_generation_through_the_recurrent_state_equals_recomputing(differential):
    model = linear_model(differential=differential)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    ours = generate_ids(model, [prompt], SamplingOptions(max_new_tokens=30, temperature=0.0))[0]
    assert ours == recompute_greedy(model, prompt, 30)


def test_left_padded_batches_match_single_prompts():
    model = linear_model()
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6], [7, 7, 2], [5]]
    options = SamplingOptions(max_new_tokens=12, temperature=0.0)
    batched = generate_ids(model, prompts, options)
    assert batched == [generate_ids(model, [p], options)[0] for p in prompts]


def test_the_decoding_state_does_not_grow_with_the_sequence():
    model = linear_model()
    cache = model.new_cache(1, capacity=48)
    sizes = []
    with torch.no_grad():
        model.decode(torch.tensor([[1, 2, 3]]), cache)
        for token in range(10):
            model.decode(torch.tensor([[token]]), cache)
            sizes.append(sum(layer.state.numel() + layer.normalizer.numel() for layer in cache))
    assert len(set(sizes)) == 1 and sizes[0] == 2 * (2 * 16 * 16 + 2 * 16)
    assert cache[0].state.dtype == torch.float32


def test_training_gradients_flow_through_the_chunked_form():
    model = linear_model().train()
    ids = torch.randint(0, 23, (2, 33))
    loss, _, _ = model(ids[:, :-1], targets=ids[:, 1:])
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_bfloat16_autocast_keeps_the_state_in_float32():
    model = linear_model()
    ids = torch.randint(0, 23, (1, 20))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids)
    torch.testing.assert_close(logits.float(), model(ids), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("changes, field", [({"feature_map": "relu"}, "model.feature_map"),
                                            ({"chunk_size": 32}, "model.chunk_size")])
def test_linear_attention_settings_are_refused_with_softmax(changes, field):
    from picolm.errors import PicolmError

    with pytest.raises(PicolmError, match=f"{field}: applies to linear attention only"):
        ModelConfig(attention="softmax", **changes).validate()


def test_train_generate_and_eval_a_linear_model_through_the_cli(numeric_data, tmp_path, capsys):
    from picolm.cli import main
    from conftest import TINY

    run = tmp_path / "linear"
    assert main(["train", "--data", str(numeric_data), "--out", str(run), "--train.max_steps", "12",
                 "--model.attention", "linear", "--model.chunk_size", "8", *TINY]) == 0
    assert main(["generate", str(run), "--prompt", "3 4 5", "--max-new-tokens", "6", "--temperature", "0"]) == 0
    assert main(["eval", str(run), "--metrics", "perplexity,accuracy"]) == 0
    assert "perplexity" in capsys.readouterr().out
