"""The GPT decoder against Hugging Face GPT-2 as an oracle, and its structural properties."""

import pytest
import torch

from picolm.config import ModelConfig
from picolm.errors import PicolmError
from picolm.interop.convert import from_gpt2, to_gpt2, to_llama, to_neox
from picolm.models.gpt import GPT, NORM_EPS


def small_config(**overrides) -> ModelConfig:
    base = dict(n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=97)
    return ModelConfig(**{**base, **overrides})


def randomised(model: GPT) -> GPT:
    """Biases and norms away from their 0/1 initial values, so the oracle comparison checks them too."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_logits_match_transformers_gpt2():
    torch.manual_seed(0)
    model = randomised(GPT(small_config(position="learned")))
    hf = to_gpt2(model)
    idx = torch.randint(0, 97, (3, 32))
    with torch.no_grad():
        ours, theirs = model(idx), hf(idx).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_gpt2_export_then_import_is_exact():
    torch.manual_seed(0)
    model = randomised(GPT(small_config(tie_weights=False)))
    back = from_gpt2(to_gpt2(model))
    assert back.config == model.config
    for name, weight in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], weight), name


LLAMA = dict(position="rope", mlp="swiglu", norm="rmsnorm", rope_base=500.0)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tie_weights", [True, False])
def test_logits_match_transformers_llama(bias, tie_weights):
    torch.manual_seed(0)
    model = randomised(GPT(small_config(bias=bias, tie_weights=tie_weights, **LLAMA)))
    hf = to_llama(model)
    assert type(hf).__name__ == "LlamaForCausalLM"
    c = hf.config
    assert (c.rope_parameters["rope_theta"], c.rms_norm_eps, c.attention_bias, c.mlp_bias, c.head_dim,
            c.tie_word_embeddings) == (500.0, NORM_EPS, bias, bias, 8, tie_weights)
    idx = torch.randint(0, 97, (3, 32))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tie_weights", [True, False])
def test_logits_match_transformers_gpt_neox(bias, tie_weights):
    """RoPE + GELU + LayerNorm: GPT-NeoX with sequential residuals and rotary on the whole head."""
    torch.manual_seed(0)
    model = randomised(GPT(small_config(bias=bias, tie_weights=tie_weights, position="rope", rope_base=300.0)))
    hf = to_neox(model)
    assert type(hf).__name__ == "GPTNeoXForCausalLM" and not hf.config.use_parallel_residual
    idx = torch.randint(0, 97, (3, 32))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("settings", "reason"), [
    (dict(LLAMA, norm="layernorm"), "model.norm is 'layernorm', Llama needs 'rmsnorm'"),
    (dict(LLAMA, mlp="gelu"), "model.mlp is 'gelu', Llama needs 'swiglu'"),
    (dict(LLAMA, attention="linear"), "model.attention is 'linear', Llama needs 'softmax'"),
    (dict(LLAMA, differential=True), "model.differential is True, Llama needs False"),
])
def test_llama_export_refuses_other_networks(settings, reason):
    with pytest.raises(PicolmError, match=reason):
        to_llama(GPT(small_config(**settings)))
    with pytest.raises(PicolmError, match="GPT-2 needs"):
        to_gpt2(GPT(small_config(**settings)))
    with pytest.raises(PicolmError, match="GPT-NeoX needs"):
        to_neox(GPT(small_config(**settings)))


def test_rmsnorm_option_normalises_blocks_and_output():
    torch.manual_seed(0)
    model = randomised(GPT(small_config(norm="rmsnorm")))
    norms = [model.ln_f] + [block.ln_1 for block in model.blocks] + [block.ln_2 for block in model.blocks]
    assert all(isinstance(n, torch.nn.RMSNorm) and n.eps == NORM_EPS for n in norms)
    x = torch.randn(2, 5, 32)
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS) * model.ln_f.weight
    torch.testing.assert_close(model.ln_f(x), expected)
    assert not any(name.endswith("ln_f.bias") for name, _ in model.named_parameters())
    model.init_weights()  # what PicolmForCausalLM runs for weights a checkpoint lacks: RMSNorm scales back to one
    assert all(torch.equal(n.weight, torch.ones(32)) for n in norms)
    with pytest.raises(PicolmError, match="model.norm: must be one of layernorm, rmsnorm"):
        small_config(norm="batchnorm").validate()




@pytest.mark.parametrize("position", ["learned", "rope", "none"])
@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_causal_model_ignores_the_future(position, mlp):
    torch.manual_seed(0)
    model = GPT(small_config(position=position, mlp=mlp)).eval()
    idx = torch.randint(0, 97, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 97
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_bidirectional_model_sees_the_future():
    torch.manual_seed(0)
    model = GPT(small_config(causal=False)).eval()
    idx = torch.randint(0, 97, (1, 16))
    changed = idx.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 97
    with torch.no_grad():
        assert not torch.allclose(model(idx)[:, 0], model(changed)[:, 0])


def test_rope_scores_depend_only_on_relative_position():
    from picolm.models.position import RotaryPosition, apply_rotary

    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    rope = RotaryPosition(ModelConfig(n_head=1, n_embd=8, block_size=64, vocab_size=10))

    def score(i, j):
        cos, sin = rope.rotary(torch.tensor([i, j]))
        return (apply_rotary(q, cos[:1], sin[:1]) * apply_rotary(k, cos[1:], sin[1:])).sum()

    assert torch.allclose(score(3, 7), score(20, 24), atol=1e-5)
    assert not torch.allclose(score(3, 7), score(3, 9), atol=1e-3)


def test_without_position_information_tokens_are_a_bag():
    """With no positions and causal attention off, the output at a token ignores the order of the others."""
    torch.manual_seed(0)
    model = GPT(small_config(position="none", causal=False)).eval()
    idx = torch.tensor([[1, 2, 3, 4, 5]])
    permuted = torch.tensor([[1, 4, 2, 5, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0, 0], model(permuted)[0, 0], atol=1e-5, rtol=1e-5)


def test_weight_tying_and_parameter_count():
    model = GPT(small_config())
    assert model.lm_head.weight is model.wte.weight
    untied = GPT(small_config(tie_weights=False))
    assert untied.num_params() - model.num_params() == 97 * 32
    assert model.num_params(exclude_position=False) - model.num_params() == 32 * 32


def test_swiglu_keeps_the_parameter_budget():
    gelu, swiglu = GPT(small_config(n_embd=96, n_head=4)), GPT(small_config(n_embd=96, n_head=4, mlp="swiglu"))
    assert abs(swiglu.num_params() - gelu.num_params()) / gelu.num_params() < 0.05


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = GPT(small_config(position="rope"))
    idx = torch.randint(0, 97, (2, 32))
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.grad_checkpointing = checkpointing
        model(idx).logsumexp(-1).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_sequence_longer_than_the_position_table_is_refused():
    model = GPT(small_config(block_size=8))
    with pytest.raises(ValueError, match="block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_presets_have_the_diffusion_pipelines_shapes_and_sizes():
    """small 6 x 384 x 6, medium 8 x 512 x 8, large 12 x 768 x 12, xl 24 x 1024 x 16, d_ff 4 x wide; about
    25M/50M/125M/300M parameters with a 32k vocabulary (built on the meta device: no memory)."""
    from picolm.config import PRESETS

    shapes = {"small": (6, 384, 6, 1536), "medium": (8, 512, 8, 2048), "large": (12, 768, 12, 3072),
              "xl": (24, 1024, 16, 4096)}
    sizes = {"small": 25e6, "medium": 50e6, "large": 125e6, "xl": 300e6}
    for name, (layers, width, heads, d_ff) in shapes.items():
        p = PRESETS[name]
        assert (p["n_layer"], p["n_embd"], p["n_head"]) == (layers, width, heads), name
        with torch.device("meta"):
            model = GPT(ModelConfig(**p, vocab_size=32768))
        assert model.blocks[0].mlp.fc.out_features == d_ff
        total = sum(t.numel() for t in model.parameters())
        assert abs(total - sizes[name]) / sizes[name] < 0.2, (name, total)
