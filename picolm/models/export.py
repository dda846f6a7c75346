"""picolm models as Hugging Face `transformers` models with the same weights.

A GPT with learned positions and a GELU MLP is GPT-2: `to_gpt2` builds a `GPT2LMHeadModel` whose outputs match
picolm's (GPT-2's Conv1D layers store their weights transposed). `transformers` is imported inside.
"""

from __future__ import annotations

import torch

from picolm.errors import PicolmError
from picolm.models.gpt import GPT


def gpt2_config_problems(model: GPT) -> list[str]:
    """Why this model is not a GPT-2 network (empty when it is)."""
    c = model.config
    wanted = {"position": "learned", "mlp": "gelu", "attention": "softmax", "causal": True}
    return [f"model.{name} is {getattr(c, name)!r}, GPT-2 needs {value!r}" for name, value in wanted.items()
            if getattr(c, name) != value]


@torch.no_grad()
def to_gpt2(model: GPT, eos_id: int | None = None):
    """A transformers GPT2LMHeadModel (float32, eval mode) computing the same function as `model`; `eos_id`:
    the tokenizer's end-of-text id, GPT-2's BOS and EOS."""
    from transformers import GPT2Config, GPT2LMHeadModel

    problems = gpt2_config_problems(model)
    if problems:
        raise PicolmError("cannot export as GPT-2: " + "; ".join(problems), field="model")
    c = model.config
    config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                        n_head=c.n_head, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=c.tie_weights,
                        bos_token_id=eos_id, eos_token_id=eos_id)
    hf = GPT2LMHeadModel(config).float().eval()
    source = {k: v.float() for k, v in model.state_dict().items()}
    target = {"transformer.wte.weight": source["wte.weight"], "transformer.wpe.weight": source["position.wpe.weight"],
              "lm_head.weight": source["lm_head.weight"]}
    layers = {"ln_1": "ln_1", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj", "ln_2": "ln_2",
              "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
    for i in range(c.n_layer):
        for hf_name, name in layers.items():
            weight = source[f"blocks.{i}.{name}.weight"]
            target[f"transformer.h.{i}.{hf_name}.weight"] = weight if hf_name.startswith("ln") else weight.t()
            target[f"transformer.h.{i}.{hf_name}.bias"] = source.get(f"blocks.{i}.{name}.bias",
                                                                     torch.zeros(weight.shape[0]))
    for name in ("weight", "bias"):
        target[f"transformer.ln_f.{name}"] = source.get(f"ln_f.{name}", torch.zeros(c.n_embd))
    missing, unexpected = hf.load_state_dict(target, strict=False)
    leftover = [k for k in missing if not k.endswith(".attn.bias") and k != "lm_head.weight"]
    if leftover or unexpected:
        raise RuntimeError(f"GPT-2 export left out {leftover} and did not place {unexpected}")
    return hf
