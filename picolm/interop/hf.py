"""Any Hugging Face causal LM behind picolm's model interface, so SFT and DPO can start from one.

`HFCausalLM.forward` keeps the contract of `GPT.forward`: logits; with targets (mean loss, correct, counted)
through the fused head + cross-entropy; with `predict_at` the log-probability of each target. Packed
preference rows pass `positions` (the HF `position_ids`) and a boolean `attn_mask` (B, 1, L, L), handed
to the HF model as a ready 4D mask: transformers uses a 4D mask as it is, boolean under SDPA, additive
(0 / dtype minimum) under eager attention.

Every load passes `trust_remote_code=False`: a folder or hub repository whose config names Python code of its own
(`auto_map`) for a model type transformers does not know is refused in one line, and its code never runs (left to
transformers, it would ask on stdin, and a piped `y` would run it). Exported picolm folders carry an `auto_map` too,
but load through the classes picolm registers.

`transformers` is imported inside the functions: importing this module does not load it.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from picolm.config import ModelConfig
from picolm.data.examples import IGNORE_INDEX
from picolm.errors import PicolmError, first_line
from picolm.interop.convert import from_gpt2
from picolm.models.gpt import GPT
from picolm.models.linear_cross_entropy import linear_cross_entropy, linear_log_probs
from picolm.tokenizer import HFTokenizer, Tokenizer, hub_tokenizer

FIELD = "train.hf_model"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# config fields by which a model rescales or caps its logits after the head: the fused loss would miss them
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "logits_mup_width_multiplier",
                    "output_multiplier_scale")
# what AutoTokenizer can turn into a fast tokenizer when a folder has no tokenizer.json
VOCABULARY_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "vocab.txt",
                    "sentencepiece.bpe.model", "tokenizer.tiktoken")
OWN_CODE = ("refused: its config names Python code of its own (auto_map), and picolm never runs code from a model "
            "folder or hub repository (trust_remote_code=False)")


def _config_value(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


class HFCausalLM(nn.Module):
    """A transformers causal LM (`self.hf`) with `GPT.forward`'s contract.

    With targets, the loss comes from the base model's final hidden states and the output embedding through
    `linear_cross_entropy` / `linear_log_probs`, so the (tokens x vocab) logits are never made; models whose
    head is not a plain bias-free linear map (soft-capped or rescaled logits) go through the HF logits instead.
    """

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model
        self._grad_checkpointing = False
        cfg = hf_model.config
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        head = hf_model.get_output_embeddings()
        vocab = head.weight.shape[0] if head is not None else _config_value(text, "vocab_size", default=0)
        self.config = ModelConfig(
            arch="hf",
            n_layer=int(_config_value(text, "num_hidden_layers", "n_layer", default=0)),
            n_head=int(_config_value(text, "num_attention_heads", "n_head", default=0)),
            n_embd=int(_config_value(text, "hidden_size", "n_embd", default=0)),
            block_size=int(_config_value(text, "max_position_embeddings", "n_positions", "n_ctx", default=0)),
            vocab_size=int(vocab),
            dropout=float(_config_value(text, "resid_pdrop", "hidden_dropout", "hidden_dropout_prob",
                                        "attention_dropout", default=0.0)),
            tie_weights=bool(getattr(text, "tie_word_embeddings", False)),
        )
        base = getattr(hf_model, "base_model", hf_model)
        self._fused = (
            isinstance(head, nn.Linear) and head.bias is None and base is not hf_model
            and all(getattr(text, name, None) in (None, 1, 1.0) for name in LOGIT_TRANSFORMS)
        )

    # -- the interface the trainer uses ------------------------------------------------------------------
    def hf_config_dict(self) -> dict:
        return self.hf.config.to_dict()

    def num_params(self, exclude_position: bool = True) -> int:
        """Every parameter, tied ones once (`exclude_position` is accepted for GPT's signature and ignored)."""
        return sum(p.numel() for p in self.parameters())

    @property
    def grad_checkpointing(self) -> bool:
        return self._grad_checkpointing

    @grad_checkpointing.setter
    def grad_checkpointing(self, on: bool) -> None:
        on = bool(on)
        if on == self._grad_checkpointing:
            return
        try:
            if on:
                enable = getattr(self.hf, "activation_checkpointing_enable", None)
                if enable is not None:  # transformers >= 5.x; gradient_checkpointing_enable is its deprecated alias
                    enable(activation_checkpointing_kwargs={"use_reentrant": False})
                else:
                    self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                disable = getattr(self.hf, "activation_checkpointing_disable", None) \
                    or self.hf.gradient_checkpointing_disable
                disable()
        except ValueError as exc:  # "... does not support gradient checkpointing"
            raise PicolmError(f"{type(self.hf).__name__} cannot checkpoint activations ({first_line(exc)})",
                              field="train.grad_checkpointing") from None
        self._grad_checkpointing = on

    # -- forward ---------------------------------------------------------------------------------------
    def _mask(self, attn_mask: torch.Tensor | None, positions: torch.Tensor | None, idx: torch.Tensor):
        """picolm's boolean mask (True: may attend) in the form the HF attention wants, or None."""
        impl = getattr(self.hf.config, "_attn_implementation", None) or "eager"
        if attn_mask is None:
            if positions is None:
                return None  # plain causal attention, left to the model
            # without a mask transformers reads restarting position_ids as separate packed sequences; picolm
            # means plain causal attention there, so say so
            T = idx.shape[1]
            attn_mask = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril().expand(idx.shape[0], 1, T, T)
        if attn_mask.dim() != 4:
            raise ValueError(f"attn_mask must be (B, 1, T, T), got shape {tuple(attn_mask.shape)}")
        if attn_mask.dtype != torch.bool:
            raise ValueError(f"attn_mask must be boolean (True where a query may attend), got {attn_mask.dtype}")
        if impl.startswith("flash") or impl.startswith("flex"):
            raise NotImplementedError(f"packed rows need a 4D attention mask, which attn_implementation={impl!r} "
                                      "does not take; load the model with 'sdpa' or 'eager' attention")
        if impl == "sdpa":
            return attn_mask
        dtype = self.hf.dtype  # eager and kernels that add the mask to the scores
        return torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill_(
            ~attn_mask, torch.finfo(dtype).min)

    def _inputs(self, idx: torch.Tensor, positions: torch.Tensor | None, attn_mask: torch.Tensor | None) -> dict:
        """The HF keyword arguments for picolm's inputs; positions (T,) or (B, T) become position_ids (B, T)."""
        if positions is None and self.config.block_size and idx.shape[1] > self.config.block_size:
            raise ValueError(f"sequence of {idx.shape[1]} tokens is longer than block_size={self.config.block_size}")
        if positions is not None and positions.dim() == 1:
            positions = positions[None].expand(idx.shape[0], -1)
        return {"input_ids": idx, "position_ids": positions, "attention_mask": self._mask(attn_mask, positions, idx),
                "use_cache": False, "return_dict": True}

    def hidden_states(self, idx: torch.Tensor, positions: torch.Tensor | None = None,
                      attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The base model's final (normed) hidden states (B, T, C)."""
        return self.hf.base_model(**self._inputs(idx, positions, attn_mask)).last_hidden_state

    def _logits(self, idx, positions, attn_mask) -> torch.Tensor:
        return self.hf(**self._inputs(idx, positions, attn_mask)).logits

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, predict_at: torch.Tensor | None = None):
        """As `GPT.forward`: logits (B, T, vocab); with targets (mean loss, correct, counted); with `predict_at`
        (flat indices into B * T) the log-probability (N,) of each target at those positions."""
        if targets is None:
            return self._logits(idx, positions, attn_mask)
        if self._fused:
            hidden = self.hidden_states(idx, positions, attn_mask)
            weight = self.hf.get_output_embeddings().weight
            if predict_at is not None:
                return linear_log_probs(hidden.flatten(0, 1)[predict_at], weight, targets)
            return linear_cross_entropy(hidden, weight, targets)
        logits = self._logits(idx, positions, attn_mask).flatten(0, 1)
        if predict_at is not None:
            return logits[predict_at].float().log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
        targets = targets.reshape(-1)
        valid = targets != IGNORE_INDEX
        counted = valid.sum().clamp(min=1)
        loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum") / counted
        correct = ((logits.argmax(-1) == targets) & valid).sum()
        return loss, correct, counted


# -- loading ------------------------------------------------------------------------------------------
def is_hub_name(name: str) -> bool:
    """Whether `name` reads as a hub repository (gpt2, org/model) rather than a path inside a local folder."""
    return (bool(HUB_ID.match(name)) and not name.startswith((".", "~"))
            and not ("/" in name and Path(name.split("/")[0]).is_dir()))


def pretrained_source(name_or_dir: str, field: str = FIELD) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local folder); a path that is no folder is an error."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PicolmError("no config.json in this folder (expected one written by save_pretrained)", path=path,
                              field=field)
        return str(path), True
    if path.exists():
        raise PicolmError("not a folder (expected a hub name such as gpt2, or a folder written by save_pretrained)",
                          path=path, field=field)
    if not is_hub_name(name_or_dir):
        raise PicolmError("no such folder", path=path, field=field)  # not a hub name, or a path in a local folder
    return name_or_dir, False


def _refuse_own_code(exc: Exception, source: str, field: str) -> None:
    """Raise the one-line refusal when transformers could not go on without the folder's own code (it names
    `trust_remote_code` in that error, and only there)."""
    if "trust_remote_code" in str(exc):
        raise PicolmError(OWN_CODE, path=source, field=field) from None


def _load_error(exc: Exception, source: str, local: bool, field: str) -> PicolmError:
    """One line for a failed `from_pretrained`: missing files, no network, corrupt weights."""
    _refuse_own_code(exc, source, field)
    if isinstance(exc, OSError):
        where = "read the model" if local else "load it from the Hugging Face hub (without internet, pass a " \
                                               "folder written by save_pretrained)"
        return PicolmError(f"could not {where}: {first_line(exc)}", path=source, field=field)
    return PicolmError(f"could not load the model ({first_line(exc)})", path=source, field=field)


def load_pretrained_tokenizer(source: str, local: bool, field: str = FIELD) -> HFTokenizer:
    """tokenizer.json of the folder (or the hub repo, through the transformers cache), else whatever
    `AutoTokenizer` can convert to a fast tokenizer (a folder with only vocab.json + merges.txt, say)."""
    tok_file = Path(source) / "tokenizer.json" if local else None
    if not local:
        try:
            from transformers.utils import cached_file

            found = cached_file(source, "tokenizer.json", _raise_exceptions_for_missing_entries=False)
            tok_file = Path(found) if found else None
        except Exception:  # offline, or no such file: fall through to the other ways
            tok_file = None
    if tok_file is not None and tok_file.is_file():
        try:
            return hub_tokenizer(str(tok_file))
        except PicolmError as exc:
            raise PicolmError(f"{tok_file.name}: {exc}", path=source, field=field) from None
    # transformers 5 makes an empty tokenizer out of nothing for a folder holding none: look for its files first
    if local and not any((Path(source) / name).is_file() for name in VOCABULARY_FILES):
        raise PicolmError(f"no tokenizer here (expected a tokenizer.json, or one of {', '.join(VOCABULARY_FILES[1:])})",
                          path=source, field=field)
    try:
        from transformers import AutoTokenizer

        backend = getattr(AutoTokenizer.from_pretrained(source, trust_remote_code=False), "backend_tokenizer", None)
    except Exception as exc:
        _refuse_own_code(exc, source, field)
        raise PicolmError(f"could not load the tokenizer ({first_line(exc)}); save a tokenizer.json beside the "
                          "model", path=source, field=field) from None
    if backend is None or backend.get_vocab_size() < 2:
        raise PicolmError("no usable fast (tokenizers) tokenizer; save a tokenizer.json beside the model",
                          path=source, field=field)
    try:
        return HFTokenizer(backend, "hf")
    except PicolmError as exc:
        raise PicolmError(str(exc), path=source, field=field) from None


def load_hf_model(name_or_dir: str) -> tuple[HFCausalLM, Tokenizer]:
    """A hub name (gpt2) or a folder written by `save_pretrained` -> (model in float32, its tokenizer).

    The model comes back as `from_pretrained` leaves it (eval mode); train mode is the caller's business."""
    source, local = pretrained_source(str(name_or_dir))
    try:
        from transformers import AutoModelForCausalLM

        import picolm.interop.picolm_transformers  # noqa: F401  (registers model_type picolm: exported picolm models)
    except ImportError:
        raise PicolmError("starting from a Hugging Face model needs the package transformers", field=FIELD) from None
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, trust_remote_code=False)
    except ValueError as exc:  # unknown model_type, or a config with no causal-LM class
        _refuse_own_code(exc, source, FIELD)
        raise PicolmError(f"not a causal language model transformers can build ({first_line(exc)})", path=source,
                          field=FIELD) from None
    except Exception as exc:
        raise _load_error(exc, source, local, FIELD) from None
    return HFCausalLM(hf_model), load_pretrained_tokenizer(source, local)


def load_gpt2(name_or_dir: str, field: str = "train.init_from") -> tuple[GPT, Tokenizer]:
    """A GPT-2 in Hugging Face form (a hub name such as gpt2, or a folder written by `save_pretrained`) as a native
    picolm GPT (`from_gpt2`, eval mode) and its tokenizer; any other model_type is refused."""
    source, local = pretrained_source(str(name_or_dir), field)
    try:
        from transformers import AutoConfig, GPT2LMHeadModel

        import picolm.interop.picolm_transformers  # noqa: F401  (model_type picolm: an export is known, not code)
    except ImportError:
        raise PicolmError("importing GPT-2 needs the package transformers", field=field) from None
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except ValueError as exc:  # no or an unknown model_type
        _refuse_own_code(exc, source, field)
        raise PicolmError(f"not a model config transformers knows ({first_line(exc)})", path=source,
                          field=field) from None
    except Exception as exc:
        raise _load_error(exc, source, local, field) from None
    if config.model_type != "gpt2":
        raise PicolmError(f"model_type is {config.model_type!r}: --init-from takes picolm runs and GPT-2 checkpoints; "
                          "start from any other Hugging Face causal LM with --hf-model", path=source, field=field)
    try:
        hf_model = GPT2LMHeadModel.from_pretrained(source, config=config, dtype=torch.float32,
                                                   trust_remote_code=False)
    except Exception as exc:
        raise _load_error(exc, source, local, field) from None
    try:
        model = from_gpt2(hf_model)
    except PicolmError as exc:
        raise PicolmError(str(exc), path=source, field=field) from None
    return model, load_pretrained_tokenizer(source, local, field)


# -- checkpoints --------------------------------------------------------------------------------------
def hf_checkpoint_config(model: HFCausalLM) -> dict:
    """What a checkpoint stores as `model_config` for an HF model: picolm's view (arch "hf", block_size,
    vocab_size, ...) plus the full HF config under `hf_config`."""
    from dataclasses import asdict

    return {**asdict(model.config), "arch": "hf", "hf_config": model.hf_config_dict()}


def hf_model_from_checkpoint(model_config_dict: dict, state_dict=None) -> HFCausalLM:
    """Rebuild the model from a checkpoint's `model_config` (with its `hf_config`) and `HFCausalLM.state_dict()`
    (without one, the weights are left to the caller: a LoRA run's hold adapters, merged as they load)."""
    hf_config = dict(model_config_dict.get("hf_config") or {})
    model_type = hf_config.pop("model_type", None)
    if not model_type:
        raise PicolmError("no hf_config.model_type in the checkpoint's model_config", field="model_config")
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.for_model(model_type, **hf_config)
        hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    except ValueError as exc:
        raise PicolmError(f"cannot rebuild the Hugging Face model ({first_line(exc)})", field="model_config") \
            from None
    model = HFCausalLM(hf_model)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    trained = model_config_dict.get("block_size") or 0
    if 0 < trained < model.config.block_size:  # a run may train a shorter context than the model's positions
        model.config = replace(model.config, block_size=trained)
    return model
