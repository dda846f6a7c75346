"""picolm models as Hugging Face `transformers` models with the same weights, and GPT-2 back into picolm.

A GPT with learned positions, a GELU MLP and LayerNorm is GPT-2: `to_gpt2` builds a `GPT2LMHeadModel` whose
outputs match picolm's and `from_gpt2` is its inverse, both through one name table (GPT-2's Conv1D layers store
their weights transposed). A GPT with RoPE, SwiGLU and RMSNorm is Llama: `to_llama` splits the fused query/key/value
and gate/up projections into Llama's separate ones. A GPT with RoPE, GELU and LayerNorm is GPT-NeoX with sequential
residuals (`to_neox`). `transformers` is imported inside the functions.
"""

from __future__ import annotations

import torch

from picolm.config import ModelConfig
from picolm.errors import PicolmError
from picolm.models.gpt import GPT, NORM_EPS

# the settings that make a picolm GPT one of these networks (beside them: any size, bias or not, tied or not)
GPT2_SHAPE = {"arch": "gpt", "position": "learned", "mlp": "gelu", "norm": "layernorm", "attention": "softmax",
              "causal": True, "differential": False}
LLAMA_SHAPE = {**GPT2_SHAPE, "position": "rope", "mlp": "swiglu", "norm": "rmsnorm"}
NEOX_SHAPE = {**GPT2_SHAPE, "position": "rope"}
# picolm's name -> GPT-2's, inside a block
GPT2_LAYER_NAMES = {"ln_1": "ln_1", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj", "ln_2": "ln_2",
                    "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # the tanh approximation of GELU, picolm's


def _shape_problems(model: GPT, shape: dict, name: str) -> list[str]:
    c = model.config
    return [f"model.{field} is {getattr(c, field)!r}, {name} needs {value!r}" for field, value in shape.items()
            if getattr(c, field) != value]


def gpt2_config_problems(model: GPT) -> list[str]:
    """Why this model is not a GPT-2 network (empty when it is)."""
    return _shape_problems(model, GPT2_SHAPE, "GPT-2")


def llama_config_problems(model: GPT) -> list[str]:
    """Why this model is not a Llama network (empty when it is)."""
    return _shape_problems(model, LLAMA_SHAPE, "Llama")


def neox_config_problems(model: GPT) -> list[str]:
    """Why this model is not a GPT-NeoX network (empty when it is)."""
    return _shape_problems(model, NEOX_SHAPE, "GPT-NeoX")


def gpt2_names(n_layer: int) -> dict[str, str]:
    """picolm's parameter name -> GPT2LMHeadModel's, for every weight and bias of a GPT-2-shaped GPT."""
    names = {"wte.weight": "transformer.wte.weight", "position.wpe.weight": "transformer.wpe.weight",
             "ln_f.weight": "transformer.ln_f.weight", "ln_f.bias": "transformer.ln_f.bias",
             "lm_head.weight": "lm_head.weight"}
    for i in range(n_layer):
        for ours, theirs in GPT2_LAYER_NAMES.items():
            for kind in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{kind}"] = f"transformer.h.{i}.{theirs}.{kind}"
    return names


def _conv1d(name: str) -> bool:
    """GPT-2 keeps its attention and MLP weights as Conv1D (in, out): picolm's Linear (out, in) transposed."""
    return name.endswith(".weight") and (".attn." in name or ".mlp." in name)


def _load_all(hf, state: dict[str, torch.Tensor], what: str) -> None:
    """Load `state` into `hf`, which must then have nothing left at its initial values."""
    missing, unexpected = hf.load_state_dict(state, strict=False)
    leftover = [k for k in missing if not k.endswith(".attn.bias")]  # GPT-2's causal-mask buffer
    if leftover or unexpected:
        raise RuntimeError(f"{what} export left out {leftover} and did not place {unexpected}")


@torch.no_grad()
def to_gpt2(model: GPT, eos_id: int | None = None, pad_id: int | None = None):
    """A transformers GPT2LMHeadModel (float32, eval mode) computing the same function as `model`; `eos_id`:
    the tokenizer's end-of-text id, GPT-2's BOS and EOS. A bias-free model gets zero biases."""
    from transformers import GPT2Config, GPT2LMHeadModel

    problems = gpt2_config_problems(model)
    if problems:
        raise PicolmError("cannot export as GPT-2: " + "; ".join(problems), field="model")
    c = model.config
    config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                        n_head=c.n_head, activation_function="gelu_new", layer_norm_epsilon=NORM_EPS,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=c.tie_weights,
                        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    hf = GPT2LMHeadModel(config).float().eval()
    source = {k: v.float() for k, v in model.state_dict().items()}
    blank = hf.state_dict()
    target = {}
    for ours, theirs in gpt2_names(c.n_layer).items():
        value = source.get(ours, torch.zeros_like(blank[theirs]))  # model.bias false: zero biases
        target[theirs] = value.t() if _conv1d(ours) else value
    _load_all(hf, target, "GPT-2")
    return hf


def gpt2_import_problems(config) -> list[str]:
    """Why a transformers GPT2Config is not a network picolm's GPT computes exactly (empty when it is)."""
    checks = [
        (config.activation_function in GPT2_ACTIVATIONS, f"activation_function is {config.activation_function!r}; "
         f"picolm's GELU is the tanh approximation ({' or '.join(GPT2_ACTIVATIONS)})"),
        (config.n_inner in (None, 4 * config.n_embd), f"n_inner is {config.n_inner}; picolm's MLP is 4 * n_embd wide"),
        (config.layer_norm_epsilon == NORM_EPS, f"layer_norm_epsilon is {config.layer_norm_epsilon}; picolm's is "
         f"{NORM_EPS}"),
        (config.scale_attn_weights and not config.scale_attn_by_inverse_layer_idx,
         "attention scores scaled other than by 1/sqrt(head size)"),
        (not config.add_cross_attention, "it has cross-attention"),
    ]
    return [why for ok, why in checks if not ok]


@torch.no_grad()
def from_gpt2(hf) -> GPT:
    """A transformers GPT2LMHeadModel as a native picolm GPT computing the same function (float32, eval mode):
    learned positions, tanh GELU, biases, LayerNorm, block_size = n_positions, dropout 0."""
    c = hf.config
    problems = gpt2_import_problems(c)
    if problems:
        raise PicolmError("picolm cannot compute this GPT-2 exactly: " + "; ".join(problems))
    config = ModelConfig(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.n_positions,
                         vocab_size=c.vocab_size, dropout=0.0, bias=True, tie_weights=bool(c.tie_word_embeddings),
                         **GPT2_SHAPE)
    model = GPT(config)
    source = hf.state_dict()
    model.load_state_dict({ours: (source[theirs].t() if _conv1d(ours) else source[theirs]).float()
                           for ours, theirs in gpt2_names(c.n_layer).items()})
    return model.eval()


@torch.no_grad()
def to_llama(model: GPT, eos_id: int | None = None, pad_id: int | None = None):
    """A transformers LlamaForCausalLM (float32, eval mode) computing the same function as `model`: picolm's RoPE
    is Llama's half-split layout, its biases Llama's attention_bias and mlp_bias, its heads all key/value heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    problems = llama_config_problems(model)
    if problems:
        raise PicolmError("cannot export as Llama: " + "; ".join(problems), field="model")
    c = model.config
    config = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.n_embd,
                         intermediate_size=model.blocks[0].mlp.proj.in_features, num_hidden_layers=c.n_layer,
                         num_attention_heads=c.n_head, num_key_value_heads=c.n_head, head_dim=c.n_embd // c.n_head,
                         max_position_embeddings=c.block_size, rms_norm_eps=NORM_EPS, rope_theta=c.rope_base,
                         attention_bias=c.bias, mlp_bias=c.bias, tie_word_embeddings=c.tie_weights,
                         hidden_act="silu", attention_dropout=0.0, bos_token_id=eos_id, eos_token_id=eos_id,
                         pad_token_id=pad_id)
    config.rope_theta = c.rope_base  # saved beside rope_parameters: transformers 4 reads this name
    hf = LlamaForCausalLM(config).float().eval()
    source = {k: v.float() for k, v in model.state_dict().items()}
    target = {"model.embed_tokens.weight": source["wte.weight"], "model.norm.weight": source["ln_f.weight"],
              "lm_head.weight": source["lm_head.weight"]}
    split = {"attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
             "attn.proj": ("self_attn.o_proj",), "mlp.gate_up": ("mlp.gate_proj", "mlp.up_proj"),
             "mlp.proj": ("mlp.down_proj",), "ln_1": ("input_layernorm",), "ln_2": ("post_attention_layernorm",)}
    for i in range(c.n_layer):
        for ours, parts in split.items():
            for kind in ("weight", "bias"):
                value = source.get(f"blocks.{i}.{ours}.{kind}")
                if value is not None:
                    for part, piece in zip(parts, value.chunk(len(parts))):
                        target[f"model.layers.{i}.{part}.{kind}"] = piece
    _load_all(hf, target, "Llama")
    return hf


@torch.no_grad()
def to_neox(model: GPT, eos_id: int | None = None, pad_id: int | None = None):
    """A transformers GPTNeoXForCausalLM (float32, eval mode) computing the same function as a GPT with RoPE, GELU
    and LayerNorm: sequential residuals, rotary on the whole head (half-split, as picolm's), heads interleaved in
    the fused projection ([q, k, v] per head where picolm has [all q, all k, all v]). A bias-free model gets zero
    biases where GPT-NeoX always has them (LayerNorm, MLP)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    problems = neox_config_problems(model)
    if problems:
        raise PicolmError("cannot export as GPT-NeoX: " + "; ".join(problems), field="model")
    c = model.config
    config = GPTNeoXConfig(vocab_size=c.vocab_size, hidden_size=c.n_embd, num_hidden_layers=c.n_layer,
                           num_attention_heads=c.n_head, intermediate_size=4 * c.n_embd, hidden_act="gelu_new",
                           max_position_embeddings=c.block_size, layer_norm_eps=NORM_EPS, use_parallel_residual=False,
                           rope_parameters={"rope_type": "default", "rope_theta": c.rope_base,
                                            "partial_rotary_factor": 1.0},
                           attention_bias=c.bias, tie_word_embeddings=c.tie_weights, attention_dropout=0.0,
                           hidden_dropout=0.0, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    hf = GPTNeoXForCausalLM(config).float().eval()
    source = {k: v.float() for k, v in model.state_dict().items()}
    blank = hf.state_dict()
    names = {"wte.weight": "gpt_neox.embed_in.weight", "ln_f.weight": "gpt_neox.final_layer_norm.weight",
             "ln_f.bias": "gpt_neox.final_layer_norm.bias", "lm_head.weight": "lm_head.weight"}
    layer = {"ln_1": "input_layernorm", "attn.qkv": "attention.query_key_value", "attn.proj": "attention.dense",
             "ln_2": "post_attention_layernorm", "mlp.fc": "mlp.dense_h_to_4h", "mlp.proj": "mlp.dense_4h_to_h"}
    for i in range(c.n_layer):
        for ours, theirs in layer.items():
            for kind in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{kind}"] = f"gpt_neox.layers.{i}.{theirs}.{kind}"
    target = {}
    for ours, theirs in names.items():
        if theirs not in blank:  # a bias GPT-NeoX leaves out as picolm does (attention_bias false)
            continue
        value = source.get(ours, torch.zeros_like(blank[theirs]))
        if ours.endswith("attn.qkv.weight") or ours.endswith("attn.qkv.bias"):
            value = value.view(3, c.n_head, -1, *value.shape[1:]).transpose(0, 1).reshape(value.shape)
        target[theirs] = value
    _load_all(hf, target, "GPT-NeoX")
    return hf
