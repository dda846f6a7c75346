"""Every picolm architecture as a Hugging Face `transformers` model: `PicolmConfig` and `PicolmForCausalLM`.

`PicolmForCausalLM` holds the picolm network itself (`GPT` or `SDD`, built by `build_model`) under `model`, so its
state-dict keys are picolm's with a `model.` prefix and its logits are picolm's. It works with `save_pretrained` /
`from_pretrained` (safetensors; a tied head is stored once and tied again on loading), `AutoModelForCausalLM`
(registered when this module is imported; a saved folder also loads with `trust_remote_code=True` in a process
that never imported picolm, through two small files that import these classes from the installed package),
`generate` and `Trainer` (`labels` give the usual shifted causal loss, -100 ignored).

Generation decodes incrementally through picolm's own `DecodeCache` (key/value buffers for softmax attention, the
recurrent state for linear attention), passed from step to step as `past_key_values` (`cache` from transformers 5.24
on): the model tells `generate` not to make a transformers `Cache` (`_supports_default_dynamic_cache`), so the
`DecodeCache` the first forward returns is what later steps receive. A 2D `attention_mask` with left padding becomes
picolm's per-row positions and boolean attention mask, as `picolm.models.masks` builds them, so batched generation
matches decoding each prompt alone. Generation stops with an error at `block_size` tokens (picolm's own decoder
slides its window instead). Bidirectional models (masked diffusion) and `arch sdd` give logits but refuse `generate`
and `labels`: they do not write left to right (`picolm generate` has their samplers).

transformers is imported at the top: import this module only on paths that need transformers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from picolm.config import ModelConfig
from picolm.errors import PicolmError
from picolm.models.build import build_model
from picolm.models.masks import padded_positions, padding_mask
from picolm.models.position import RotaryPosition

MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))
# the output field that carries the cache between generation steps: `cache` from transformers 5.24 on
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
# modules written beside the weights (auto class -> module, class) so that `trust_remote_code=True` finds the
# classes in the installed picolm
SHIMS = {"AutoConfig": ("configuration_picolm", "PicolmConfig"),
         "AutoModelForCausalLM": ("modeling_picolm", "PicolmForCausalLM")}


class PicolmConfig(PreTrainedConfig):
    """A picolm `ModelConfig` (every field, under its own name) as a transformers config; the usual transformers
    names (`hidden_size`, `num_hidden_layers`, ...) read and write the picolm fields."""

    model_type = "picolm"
    attribute_map = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
                     "max_position_embeddings": "block_size", "tie_word_embeddings": "tie_weights"}

    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        kwargs = {self.attribute_map.get(name, name): value for name, value in kwargs.items()}
        defaults = ModelConfig()
        for name in MODEL_FIELDS:
            kwargs.setdefault(name, getattr(defaults, name))
        super().__post_init__(**kwargs)

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoConfig"):
        """Nothing to do: a saved folder carries its own files importing the installed class (SHIMS)."""

    def to_model_config(self) -> ModelConfig:
        return ModelConfig(**{name: getattr(self, name) for name in MODEL_FIELDS})

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs) -> PicolmConfig:
        """`kwargs`: transformers settings such as bos_token_id, eos_token_id, pad_token_id."""
        return cls(**dataclasses.asdict(config), **kwargs)


class PicolmForCausalLM(PreTrainedModel, GenerationMixin):
    """A picolm network (`self.model`) with transformers' model interface."""

    config_class = PicolmConfig
    base_model_prefix = ""  # the picolm network includes its head: there is no separate base model
    main_input_name = "input_ids"
    _tied_weights_keys = {"model.lm_head.weight": "model.wte.weight"}  # when config.tie_weights
    _no_split_modules = ["Block"]
    _is_stateful = True  # a DecodeCache cannot be cropped: no assisted generation

    def __init__(self, config: PicolmConfig):
        super().__init__(config)
        model_config = config.to_model_config()
        if model_config.arch == "hf":
            raise PicolmError("an hf model is a transformers model already", field="model.arch")
        self.model = build_model(model_config)
        self.post_init()

    @classmethod
    def from_model(cls, model, **config_kwargs) -> PicolmForCausalLM:
        """Wrap a picolm network as it is (its weights shared, its train/eval mode kept); `config_kwargs`: the
        transformers settings, e.g. eos_token_id=tokenizer.eos_id."""
        with torch.device("meta"):  # the network built here is replaced at once: allocate nothing for it
            wrapper = cls(PicolmConfig.from_model_config(model.config, **config_kwargs))
        wrapper.model = model
        return wrapper.train(model.training)

    def to_picolm(self):
        """The picolm network (shared, not copied)."""
        return self.model

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModel"):
        """Nothing to do: a saved folder carries its own files importing the installed class (SHIMS)."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate passes on the DecodeCache that forward returns

    @torch.no_grad()
    def _init_weights(self, module) -> None:
        """picolm's initialisation, for whatever a checkpoint did not hold (transformers builds the network on the
        meta device, loads the weights, then initialises the rest); the RoPE frequencies are never saved."""
        if isinstance(module, RotaryPosition):
            module.inv_freq.copy_(RotaryPosition(self.config.to_model_config()).inv_freq)
        elif module is getattr(self, "model", None):
            module.init_weights()

    def get_input_embeddings(self):
        return self.model.wte

    def get_output_embeddings(self):
        return self.model.lm_head

    @property
    def writes_left_to_right(self) -> bool:
        c = self.model.config
        return c.causal and c.arch == "gpt"

    def _refuse_unless_left_to_right(self, what: str) -> None:
        if not self.writes_left_to_right:
            field = "model.arch" if self.model.config.arch != "gpt" else "model.causal"
            raise PicolmError(f"{what} needs a left-to-right (causal) model; this one denoises the whole sequence "
                              "at once: sample it with picolm generate", field=field)

    def generate(self, *args, **kwargs):
        self._refuse_unless_left_to_right("generate")
        return super().generate(*args, **kwargs)

    def _reorder_cache(self, cache, beam_idx: torch.Tensor):
        """Beam search: keep the cached rows of the surviving beams."""
        cache.keep_rows(beam_idx)
        return cache

    def _attention_inputs(self, attention_mask, position_ids, past: int, length: int):
        """picolm's positions and boolean mask (B, 1, T, past + T) from a transformers 2D padding mask (1: token,
        0: padding) over the cached and new tokens; None for either when nothing is padded."""
        if attention_mask is None:
            return position_ids, None
        if attention_mask.dim() != 2 or attention_mask.shape[1] != past + length:
            raise ValueError(f"attention_mask must be (batch, {past + length}): one column per cached and new "
                             f"token, got shape {tuple(attention_mask.shape)}")
        real = attention_mask.bool()
        if bool(real.all()):
            return position_ids, None
        positions = position_ids if position_ids is not None else padded_positions(real, past)
        return positions, padding_mask(real, past, causal=self.model.config.causal)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                past_key_values=None, use_cache: bool | None = None, return_dict: bool | None = None, cache=None,
                **kwargs):
        """Logits (B, T, vocab) equal to picolm's forward on `input_ids`; with `labels` the shifted causal loss;
        with `use_cache` (or a `past_key_values` from an earlier call) the `DecodeCache` holding these tokens.
        An sdd model reads the ids as a clean state (one candidate per position)."""
        if labels is not None:
            self._refuse_unless_left_to_right("a causal language-modelling loss")
        network = self.model
        cache = cache if cache is not None else past_key_values  # transformers >= 5.24 names it `cache`
        if (use_cache or cache is not None) and self.writes_left_to_right:
            cache = cache if cache is not None else network.new_cache(input_ids.shape[0])
        else:
            cache = None
        past = cache.length if cache is not None else 0
        if past + input_ids.shape[1] > network.config.block_size:
            raise ValueError(f"sequence of {past + input_ids.shape[1]} tokens is longer than "
                             f"block_size={network.config.block_size}")
        positions, attn_mask = self._attention_inputs(attention_mask, position_ids, past, input_ids.shape[1])
        if cache is None:
            logits = network(input_ids, positions=positions, attn_mask=attn_mask)
        else:
            hidden = network.hidden_states(input_ids, positions=positions, attn_mask=attn_mask, cache=cache)
            logits = F.linear(hidden, network.output_weight())
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=logits.shape[-1], **kwargs)
        output = CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache})
        return output if (return_dict if return_dict is not None else self.config.return_dict) else output.to_tuple()

    def save_pretrained(self, save_directory, is_main_process: bool = True, **kwargs):
        """transformers' save_pretrained, plus an `auto_map` and the two files it names (written first, so that
        push_to_hub sends them too): `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` then
        works in a process that never imported picolm."""
        self.config.auto_map = {auto: f"{module}.{name}" for auto, (module, name) in SHIMS.items()}
        if is_main_process:
            folder = Path(save_directory)
            folder.mkdir(parents=True, exist_ok=True)
            for module, name in SHIMS.values():
                (folder / f"{module}.py").write_text(f'"""picolm\'s {name}, from the installed picolm package."""\n\n'
                                                     f"from picolm.interop.picolm_transformers import {name}\n\n"
                                                     f'__all__ = ["{name}"]\n')
        super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)


AutoConfig.register(PicolmConfig.model_type, PicolmConfig, exist_ok=True)
AutoModelForCausalLM.register(PicolmConfig, PicolmForCausalLM, exist_ok=True)
