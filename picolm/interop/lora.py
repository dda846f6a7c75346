"""LoRA through Hugging Face `peft`, on any picolm network or `--hf-model`: adapters injected in place, so the model
keeps its class, its forward and its settings (grad checkpointing, context), and only the adapters train.

The adapters are peft's layers inside the model (`...qkv.base_layer.weight`, `...qkv.lora_A.default.weight`), so a
checkpoint holds them beside the frozen weights and a resume loads them back; a finished run is loaded with them
merged into its weights (peft's `merge_and_unload`), as `eval`, `generate`, `chat` and `export` want it. A DPO run's
reference is the same model with its adapters off (picolm/methods/preference.py), not a second copy.

`peft` (which imports transformers) is imported inside the functions: importing this module does not load it.
"""

from __future__ import annotations

from torch import nn

from picolm.config import LoraConfig
from picolm.errors import PicolmError

EXTRA = "pip install 'picolm[lora]'"


def _peft():
    try:
        import peft
    except ImportError:
        raise PicolmError(f"LoRA needs the package peft: {EXTRA}", field="lora.rank") from None
    return peft


def output_head(model: nn.Module) -> nn.Module | None:
    """The layer that writes the vocabulary: picolm's `lm_head`, or a Hugging Face model's output embeddings."""
    inner = getattr(model, "hf", model)  # --hf-model: the transformers model inside HFCausalLM
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if head is not None else getattr(model, "lm_head", None)


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers LoRA can adapt, by full name: every linear map (`nn.Linear`, GPT-2's `Conv1D`) but the output head,
    which writes the vocabulary (and often shares its weight with the token embedding)."""
    from transformers.pytorch_utils import Conv1D  # peft imports transformers: no extra cost

    head = output_head(model)
    return {name: module for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, Conv1D)) and module is not head}


def peft_config(model: nn.Module, settings: LoraConfig):
    """peft's LoraConfig for `model`: the layers whose name ends in one of `settings.targets` (all of
    `linear_layers` when empty); a target no layer has is refused, naming the layers there are."""
    peft = _peft()
    from transformers.pytorch_utils import Conv1D

    layers = linear_layers(model)
    names = list(dict.fromkeys(name.rpartition(".")[2] for name in layers))
    unknown = [target for target in settings.targets if target not in names]
    if unknown:
        raise PicolmError(f"no linear layer named {unknown[0]!r} in this model; it has {', '.join(names)}",
                          field="lora.targets")
    chosen = [name for name in layers if not settings.targets or name.rpartition(".")[2] in settings.targets]
    return peft.LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                           target_modules=chosen,  # full names: exactly these layers
                           fan_in_fan_out=all(isinstance(layers[name], Conv1D) for name in chosen))


def add_adapters(model: nn.Module, settings: LoraConfig, log=None) -> nn.Module:
    """`model` (changed in place) with LoRA adapters on its linear layers; every other weight frozen. With `log`,
    says which layers and what share of the parameters train."""
    config = peft_config(model, settings)
    model = _peft().inject_adapter_in_model(config, model)
    if log is not None:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        names = sorted({name.rpartition(".")[2] for name in config.target_modules})
        log(f"LoRA rank {settings.rank} (alpha {settings.alpha:g}) on {len(config.target_modules)} layers "
            f"({', '.join(names)}): {trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%)")
    return model


def merged(model: nn.Module, settings: LoraConfig, state_dict: dict) -> nn.Module:
    """A LoRA run's network (`model`, built bare) with the run's weights (`state_dict`, adapters included) and its
    adapters merged into them by peft's `merge_and_unload`: a plain model of `model`'s class."""
    tuner = _peft().LoraModel(model, peft_config(model, settings), "default")
    model.load_state_dict(state_dict)
    return tuner.merge_and_unload()
