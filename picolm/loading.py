"""A model from any checkpoint (its architecture read from it; a LoRA run's with its adapters merged) or from what
`train.init_from` names."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from torch import nn

from picolm.checkpoint import find_checkpoint, load_checkpoint
from picolm.config import LoraConfig, ModelConfig
from picolm.errors import PicolmError, first_line
from picolm.models.build import NETWORKS, build_model
from picolm.models.low_precision import with_weights_in
from picolm.tokenizer import Tokenizer, tokenizer_from_dict


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Tokenizer
    checkpoint: dict
    path: Path


def model_config_from_checkpoint(state: dict, path) -> ModelConfig:
    try:
        return ModelConfig(**state["model_config"])
    except TypeError as exc:
        raise PicolmError(f"model_config does not fit this picolm ({exc})", path=path) from None


def checkpoint_adapters(state: dict, path) -> LoraConfig:
    """The LoRA settings a checkpoint was trained with (rank 0: none)."""
    try:
        return LoraConfig(**(state.get("train_config") or {}).get("lora", {}))
    except TypeError as exc:
        raise PicolmError(f"its LoRA settings do not fit this picolm ({exc})", path=path) from None


def load_model(target: str | Path, device="cpu", dtype: str = "float32") -> LoadedModel:
    """A run directory (its best, else last, checkpoint) or a checkpoint file -> model in eval mode; a LoRA run's
    adapters merged into its weights, so it is a plain model of its architecture. `dtype`: its linear layers'
    weights for inference (bfloat16, int8: weight-only low precision)."""
    path = find_checkpoint(target)
    state = load_checkpoint(path, mmap=True)
    if state["architecture"] not in (*NETWORKS, "hf"):
        raise PicolmError(f"unknown architecture {state['architecture']!r}", path=path)
    if dtype != "float32" and state["architecture"] == "hf":
        raise PicolmError(f"weights in {dtype} are for picolm's own networks; this checkpoint holds a transformers "
                          "model (use --dtype float32)", field="--dtype", path=path)
    adapters = checkpoint_adapters(state, path)
    try:
        if state["architecture"] == "hf":
            from picolm.interop.hf import hf_model_from_checkpoint

            model = hf_model_from_checkpoint(state["model_config"])
        else:
            model = build_model(model_config_from_checkpoint(state, path))
        if adapters.rank:
            from picolm.interop.lora import merged

            model = merged(model, adapters, state["model_state_dict"])
        else:
            model.load_state_dict(state["model_state_dict"])
    except (RuntimeError, ValueError) as exc:  # tensors missing, extra or of another shape than model_config says
        raise PicolmError(f"its weights do not fit its model_config ({first_line(exc)})", path=path) from None
    model = with_weights_in(model.to(device).eval(), dtype)
    return LoadedModel(model, checkpoint_tokenizer(state, path), state, path)


def checkpoint_tokenizer(state: dict, path) -> Tokenizer:
    """The tokenizer a checkpoint embeds, or one line saying why there is none to use."""
    try:
        return tokenizer_from_dict(state["tokenizer"])
    except Exception as exc:  # a missing key, a wrong type, or the tokenizers library's own error types
        raise PicolmError(f"no usable tokenizer in it ({first_line(exc)})", path=path) \
            from None


def load_start(source: str, device="cpu") -> LoadedModel:
    """What `train.init_from` names: a picolm run directory or checkpoint, or a GPT-2 in Hugging Face form (a folder
    written by save_pretrained, or a hub name such as gpt2) imported as a native picolm GPT."""
    from picolm.interop.hf import is_hub_name, load_gpt2

    path = Path(source).expanduser()
    hf_folder = path.is_dir() and (path / "config.json").is_file()
    if not hf_folder and (path.exists() or not is_hub_name(source)):
        return load_model(path, device)
    model, tokenizer = load_gpt2(source)
    return LoadedModel(model.to(device), tokenizer, {}, path)


def describe_mismatch(expected: ModelConfig, found: dict) -> str | None:
    """The first field where a checkpoint's model config differs from the expected one (a field added after the
    checkpoint was written counts as its default)."""
    defaults = asdict(ModelConfig())
    for name, value in asdict(expected).items():
        theirs = found.get(name, defaults[name])
        if theirs != value:
            return f"model.{name} is {value!r} here but {theirs!r} in the checkpoint"
    return None


def with_run_settings(model: nn.Module, config: ModelConfig) -> nn.Module:
    """A starting model given a fine-tuning run's dropout and shorter context, the two model settings that can change
    once a model is trained (the run's set-up refuses the others). Learned positions past the context are dropped."""
    current = model.config
    if (current.dropout, current.block_size) == (config.dropout, config.block_size):
        return model
    if current.arch == "hf":  # its modules hold their own dropout (refused earlier); the context cuts the windows
        model.config = replace(current, block_size=config.block_size)
        return model
    state = {name: tensor[:config.block_size] if name.endswith("position.wpe.weight") else tensor
             for name, tensor in model.state_dict().items()}
    rebuilt = build_model(replace(current, dropout=config.dropout, block_size=config.block_size))
    rebuilt.load_state_dict(state)
    return rebuilt
