"""`picolm export RUN --format hf OUT_DIR`: a run as a folder `transformers` loads with `from_pretrained`.

The class follows the architecture: a GPT-2-shaped GPT (learned positions, GELU, LayerNorm, softmax, causal) is
written as `GPT2LMHeadModel`, a Llama-shaped one (RoPE, SwiGLU, RMSNorm) as `LlamaForCausalLM` and one with RoPE,
GELU and LayerNorm as `GPTNeoXForCausalLM`, so they load where picolm is not installed; a run trained from
`--hf-model` as its own class; any other picolm model as `PicolmForCausalLM` (picolm/interop/picolm_transformers.py).
A LoRA run is written as a plain model of its class: `load_model` merges its adapters into the weights (peft's
`merge_and_unload`), so the folder needs no peft.
Beside the weights go generation_config.json and a fast tokenizer that encodes text exactly as picolm's does.
`transformers` is imported inside the functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from picolm.data.folder import new_folder
from picolm.errors import PicolmError
from picolm.interop.convert import (gpt2_config_problems, llama_config_problems, neox_config_problems, to_gpt2,
                                    to_llama, to_neox)
from picolm.loading import load_model
from picolm.tokenizer import SymbolTokenizer, Tokenizer

FORMATS = ("hf",)
STANDALONE = ("GPT2LMHeadModel", "LlamaForCausalLM", "GPTNeoXForCausalLM")  # they load without picolm


@dataclass
class Exported:
    out_dir: Path
    model_class: str
    files: list[str]


def hf_model_for(model, tokenizer: Tokenizer):
    """The transformers model (float32, eval mode) that computes what `model` does, with the tokenizer's end-of-text
    and padding ids in its config and generation config (end-of-text is also the BOS where none is set)."""
    from transformers import GenerationConfig

    eos, pad = tokenizer.eos_id, tokenizer.pad_id
    if model.config.arch == "hf":
        hf = model.hf
    elif not gpt2_config_problems(model):
        hf = to_gpt2(model, eos_id=eos, pad_id=pad)
    elif not llama_config_problems(model):
        hf = to_llama(model, eos_id=eos, pad_id=pad)
    elif not neox_config_problems(model):
        hf = to_neox(model, eos_id=eos, pad_id=pad)
    else:
        from picolm.interop.picolm_transformers import PicolmForCausalLM

        hf = PicolmForCausalLM.from_model(model)
    c = hf.config
    c.eos_token_id, c.pad_token_id = eos, pad
    if c.bos_token_id is None:
        c.bos_token_id = eos
    hf.generation_config = GenerationConfig(bos_token_id=c.bos_token_id, eos_token_id=eos, pad_token_id=pad)
    return hf.float().eval()


def hf_tokenizer(tokenizer: Tokenizer, max_length: int):
    """A transformers fast tokenizer whose `encode(text)` gives `tokenizer.encode(text)`: the same
    `tokenizers` pipeline (a post-processor that adds special tokens is dropped: picolm adds none), or for the
    numeric and char vocabularies an equivalent word-level one; end-of-text is its BOS and EOS."""
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import PreTrainedTokenizerFast

    symbols = isinstance(tokenizer, SymbolTokenizer)
    if symbols:
        backend = tokenizer.to_tokenizers()
    else:
        backend = RustTokenizer.from_str(tokenizer.tok.to_str())
        if backend.encode("a", add_special_tokens=True).ids != backend.encode("a", add_special_tokens=False).ids:
            backend.post_processor = None
    eos, pad = backend.id_to_token(tokenizer.eos_id), backend.id_to_token(tokenizer.pad_id)
    # symbol vocabularies read "<|endoftext|>" in text as picolm does: a char one letter by letter
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=eos, eos_token=eos, pad_token=pad,
                                   split_special_tokens=symbols, clean_up_tokenization_spaces=False,
                                   model_max_length=max_length)


def _name_tokenizer_class(path: Path) -> None:
    """Name the tokenizer class by its alias PreTrainedTokenizerFast, which transformers 4 knows too (v5 writes
    TokenizersBackend)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _check_empty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PicolmError("already exists and is not empty: pass a new folder", path=out)


def export_run(target: str | Path, out_dir: str | Path, fmt: str = "hf") -> Exported:
    """Write the run (its best, else last, checkpoint) or checkpoint `target` into the new folder `out_dir`,
    through a temporary folder beside it renamed at the end, so nothing half-written is left."""
    if fmt not in FORMATS:
        raise PicolmError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})", field="--format")
    out = Path(out_dir)
    _check_empty(out)
    loaded = load_model(target)
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise PicolmError("exporting needs the package transformers (pip install 'picolm[hf]')",
                          field="--format") from None
    hf = hf_model_for(loaded.model, loaded.tokenizer)
    hf.config.picolm_tokenizer_fingerprint = loaded.tokenizer.fingerprint  # the export's tokenizer.json gives it too
    with new_folder(out, check=_check_empty) as tmp:  # one export at a time; a kill leaves no half-written folder
        hf.save_pretrained(tmp)
        hf_tokenizer(loaded.tokenizer, loaded.model.config.block_size).save_pretrained(tmp)
        _name_tokenizer_class(tmp / "tokenizer_config.json")
        files = sorted(p.name for p in tmp.iterdir())
    return Exported(out, type(hf).__name__, files)
