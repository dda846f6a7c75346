"""Configuration: frozen dataclasses whose fields carry their own help text, presets, YAML recipes and dotted
`--section.key value` overrides; and the sampling options every verb that writes text shares.

A config is built once (defaults, then a recipe, then overrides), validated once and never changed afterwards:
what training works out later (the vocabulary, the family's extra token ids, the run's name) goes into a resolved
copy (`dataclasses.replace`). Checks that depend on the method family live with the family (picolm/methods).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from picolm.errors import PicolmError
from picolm.files import write_text_atomically

ATTENTION_KINDS = ("softmax", "linear")
FEATURE_MAP_KINDS = ("elu", "relu")  # linear attention kernels phi(x)
POSITION_KINDS = ("learned", "rope", "none")
MLP_KINDS = ("gelu", "swiglu")
NORM_KINDS = ("layernorm", "rmsnorm")
ARCHITECTURES = ("gpt", "hf", "sdd")


# ---------------------------------------------------------------- the numbers a setting or option takes

MAX_INT = 2**63 - 1  # what an int64 tensor holds
SEEDS = (0, 2**32 - 1)  # what every generator (Python's, NumPy's, torch's) accepts
MAX_VOCAB = 2**24  # token ids fit uint32 token files many times over; an embedding this tall is already 8 GB at 128
WEIGHT_DTYPES = ("float32", "bfloat16", "int8")  # inference: the linear layers' weights (picolm/models/low_precision.py)
MAX_NEW_TOKENS = 1_000_000  # per generation: more never ends on any machine picolm targets
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32: a positive setting below it trains as 0


def _shown(x: float) -> str:
    """1e6 rather than 1e+06; two digits for the tiny (1.2e-38)."""
    mantissa, e, exponent = (f"{x:.2g}" if x and abs(x) < 1e-4 else f"{x:g}").partition("e")
    return f"{mantissa}e{int(exponent)}" if e else mantissa


@dataclass(frozen=True)
class Range:
    """The numbers a setting or option takes, declared beside it so that the argument parsers, the config checks and
    the help all read one declaration: `low` to `high` (`above` / `below`: that end excluded), whole numbers when
    `integer`, never NaN or infinity. `tiny`: a nonzero value closer to 0 than this is refused as too small to mean
    anything (below float32's range it is 0 in training); 0 itself stays allowed when the range holds it. `unit`
    names what a count counts, for messages such as "needs at least 2 samples"."""

    low: float
    high: float
    integer: bool = False
    above: bool = False
    below: bool = False
    tiny: float = 0.0
    unit: str = ""

    def interval(self) -> str:
        return f"{'(' if self.above else '['}{_shown(self.low)}, {_shown(self.high)}{')' if self.below else ']'}"

    def describe(self) -> str:
        """For the help: `1 to 1024`, `at least 1`, `in [0, 1)`, `in [0, 100]; 0 or at least 0.0001`."""
        if self.integer:
            return f"at least {self.low}" if self.high == MAX_INT else f"{self.low} to {self.high}"
        shown = f"in {self.interval()}"
        if self.tiny > FLOAT32_TINY:
            shown += f"; 0 or at least {_shown(self.tiny)}" if self.low == 0 and not self.above else \
                f", at least {_shown(self.tiny)}"
        return shown

    def why_not(self, value) -> str | None:
        """Why `value` is out of range (`must be at least 1`), or None when it is in."""
        if self.integer:
            if isinstance(value, bool) or not isinstance(value, int):
                return "must be a whole number"
            if value < self.low:
                return f"needs at least {self.low} {self.unit}" if self.unit else f"must be at least {self.low}"
            if value > self.high:
                return f"takes at most {self.high} {self.unit}" if self.unit else f"must be at most {self.high}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        inside = (math.isfinite(value) and (value > self.low if self.above else value >= self.low)
                  and (value < self.high if self.below else value <= self.high))
        if not inside:
            return f"must be in {self.interval()}"
        if value and abs(value) < max(self.tiny, FLOAT32_TINY):
            zero = self.low <= 0 <= self.high and not (self.above and self.low == 0)
            return f"must be {'0 or ' if zero else ''}at least {_shown(max(self.tiny, FLOAT32_TINY))}"
        return None


def whole(low: int, high: int = MAX_INT, unit: str = "") -> Range:
    """Whole numbers from `low` to `high`."""
    return Range(low, high, integer=True, unit=unit)


def real(low: float, high: float, *, above: bool = False, below: bool = False, tiny: float = 0.0) -> Range:
    """Finite numbers from `low` to `high` (`above` / `below`: that end excluded)."""
    return Range(low, high, above=above, below=below, tiny=tiny)


def range_checks(settings) -> list[tuple[bool, str, str]]:
    """(ok, field, why) for every number of a settings dataclass whose field declares a Range (each item of a list;
    None, where a field may be empty, is not a number to check)."""
    checks = []
    for f in dataclasses.fields(settings):
        within, value = f.metadata.get("range"), getattr(settings, f.name)
        if within is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            why = None if item is None else within.why_not(item)
            checks.append((why is None, f.name, f"{why} (got {item!r})"))
    return checks


NUMBERS = ("int", "float", "list[int]")  # the field types that must declare a Range


def numeric(f: dataclasses.Field) -> bool:
    """Whether a settings field holds numbers (and so must declare its Range)."""
    return str(f.type).replace(" | None", "") in NUMBERS


def setting(default=None, help: str = "", *, factory=None, resolved: bool = False, within: Range | None = None):
    """A config field whose help text lives with it: `picolm train --help` and the docs print it. `resolved`: left at
    its default, training fills it in (the vocabulary, a family's token ids, the family's kind). `within`: the numbers
    it takes (every numeric field declares them)."""
    metadata = {"help": help, "resolved": resolved, "range": within}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def filled_in_by_training(cls, name: str, value) -> bool:
    """Whether a field left at this value is one training fills in (see `setting`)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.metadata.get("resolved", False) and value == f.default


def refuse_failed(checks: list[tuple[bool, str, str]], prefix: str = "") -> None:
    """Raise a PicolmError for the first (ok, field, why) that is not ok, naming `prefix + field`."""
    for ok, name, why in checks:
        if not ok:
            raise PicolmError(why, field=prefix + name)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = setting("gpt", "network: gpt (picolm's transformer), sdd (sparse distribution diffusion), hf (a "
                               "Hugging Face causal LM, set by train.hf_model)")
    n_layer: int = setting(4, "transformer blocks", within=whole(1, 1024))
    n_head: int = setting(4, "attention heads per block", within=whole(1, 1024))
    n_embd: int = setting(128, "width of the residual stream", within=whole(1, 65536))
    block_size: int = setting(256, "context length in tokens", within=whole(1, 2**20))
    vocab_size: int = setting(0, "embedding rows; 0 takes the tokenizer's (plus any token the method adds)",
                              resolved=True, within=whole(0, MAX_VOCAB))
    dropout: float = setting(0.0, "dropout probability after embeddings, attention and MLP (0: none)",
                             within=real(0, 1, below=True))
    bias: bool = setting(True, "biases in linear layers and LayerNorm")
    attention: str = setting("softmax", "softmax | linear (kernelised, with a constant-size recurrent state)")
    position: str = setting("learned", "learned | rope | none")
    causal: bool = setting(True, "left-to-right attention; false for bidirectional models (masked diffusion, sdd)")
    mlp: str = setting("gelu", "gelu | swiglu")
    norm: str = setting("layernorm", "the blocks' two norms and the final one: layernorm | rmsnorm (no bias)")
    tie_weights: bool = setting(True, "the head shares the token embedding")
    rope_base: float = setting(10000.0, "RoPE's frequency base", within=real(1, 1e12, above=True))
    feature_map: str = setting("elu", "linear attention: phi(x) = elu(x) + 1 | relu")
    chunk_size: int = setting(64, "linear attention: tokens per chunk of the causal parallel form",
                              within=whole(1, 2**20))
    differential: bool = setting(False, "feed the blocks e_t - e_(t-1); add e_t back before the final norm")
    mask_id: int = setting(-1, "masked diffusion: the mask token's id, the last of the vocabulary (set by training)",
                           resolved=True, within=whole(-1, MAX_VOCAB))
    ignore_id: int = setting(-1, "sdd: the IGNORE (padding) token's id, the last of the vocabulary (set by "
                                 "training)", resolved=True, within=whole(-1, MAX_VOCAB))
    sdd_k: int = setting(0, "sdd: candidates per position the sampler uses, the largest k trained (set by "
                            "training)", resolved=True, within=whole(0, MAX_VOCAB))

    def validate(self) -> None:
        refuse_failed(range_checks(self), "model.")  # first: the checks below divide by n_head
        kinds = [(self.arch, "arch", ARCHITECTURES), (self.attention, "attention", ATTENTION_KINDS),
                 (self.position, "position", POSITION_KINDS), (self.mlp, "mlp", MLP_KINDS),
                 (self.norm, "norm", NORM_KINDS), (self.feature_map, "feature_map", FEATURE_MAP_KINDS)]
        checks = [(value in allowed, name, f"must be one of {', '.join(allowed)}") for value, name, allowed in kinds]
        checks += [
            (self.n_embd % self.n_head == 0, "n_embd", f"{self.n_embd} is not divisible by n_head={self.n_head}"),
            (self.mask_id < 0 or (self.vocab_size <= 0 or self.mask_id == self.vocab_size - 1), "mask_id",
             "must be the last id of the vocabulary"),
            (self.ignore_id < 0 or (self.vocab_size <= 0 or self.ignore_id == self.vocab_size - 1), "ignore_id",
             "must be the last id of the vocabulary"),
            (self.vocab_size <= 0 or self.sdd_k <= self.vocab_size, "sdd_k",
             f"{self.sdd_k} candidates per position is more than the vocabulary of {self.vocab_size}"),
        ]
        if self.attention != "linear":
            defaults = ModelConfig()
            for name in ("feature_map", "chunk_size"):
                checks.append((getattr(self, name) == getattr(defaults, name), name,
                               f"applies to linear attention only (model.attention is {self.attention})"))
        if self.position == "rope":
            checks.append(((self.n_embd // self.n_head) % 2 == 0, "n_embd", "RoPE needs an even head size"))
        refuse_failed(checks, "model.")


# The sizes of the diffusion pipeline (aaholmes/diffusion-llm), whose users know them: the MLP is 4 x n_embd wide (d_ff
# 1536, 2048, 3072, 4096). Parameter counts with a 32k vocabulary and tied embeddings; tiny's with the stories' 2k.
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=256),  # ~1M
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=512),  # ~23M (~25M)
    "medium": dict(n_layer=8, n_head=8, n_embd=512, block_size=1024),  # ~42M (~50M untied)
    "large": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),  # ~110M; 124M with GPT-2's vocabulary
    "xl": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),  # ~335M
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, dropout=0.0,
                 bias=True, position="learned", mlp="gelu", attention="softmax"),
    "gpt2-dropout": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, dropout=0.1,
                         bias=True, position="learned", mlp="gelu", attention="softmax"),
}


@dataclass(frozen=True)
class DataConfig:
    path: str = setting("", "a directory written by `picolm prepare`")
    skip_bad_rows: bool = setting(False, "SFT/DPO rows that cannot be used: report and skip them instead of stopping")

    def validate(self) -> None:
        pass


@dataclass(frozen=True)
class ObjectiveConfig:
    """What is learned. Which family reads which field is the family's business (picolm/methods): a field set for a
    family that does not read it is refused."""

    kind: str = setting("auto", "the method family; auto: the starting model's (mdlm, sdd), else the data's "
                                "(text -> next_token, sft -> sft, dpo -> dpo)", resolved=True)
    beta: float = setting(0.1, "dpo: strength of the pull toward the reference",
                          within=real(0, 1000, above=True, tiny=1e-4))
    loss: str = setting("sigmoid", "dpo loss: sigmoid (DPO; cDPO with label_smoothing) | ipo | hinge")
    label_smoothing: float = setting(0.0, "dpo: the assumed rate of flipped preference labels (conservative DPO; 0: "
                                          "plain DPO)", within=real(0, 0.5, below=True))
    length_normalize: bool = setting(False, "dpo: mean instead of summed response log-probabilities (always for "
                                            "ipo)")
    reference: str = setting("precomputed", "dpo reference: precomputed (once, before training; the reference model "
                                            "is dropped) | live")
    monitor: str = setting("", "sft: a DPO data directory whose chosen/rejected mean log-probabilities are logged")
    eps: float = setting(1e-3, "mdlm: the smallest noise level t (t ~ U(eps, 1)); the loss weighs a level by 1/t",
                         within=real(0, 1, above=True, below=True, tiny=1e-6))
    sdd_k: int = setting(4, "sdd: weighted candidate tokens per position (fixed k)", within=whole(1, MAX_VOCAB))
    sdd_k_curriculum: list[int] = setting(help="sdd: k per equal share of the steps, e.g. 1,2,4,8", factory=list,
                                          within=whole(1, MAX_VOCAB))

    def validate(self) -> None:
        refuse_failed(range_checks(self), "objective.")


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int | None = setting(1000, "optimizer steps; the limit reached first stops the run", within=whole(1))
    epochs: float | None = setting(None, "passes over the training data, rounded up to whole steps; when set, "
                                         "replaces max_steps", within=real(0, 1e6, above=True))
    max_minutes: float | None = setting(None, "wall-time budget of the loop (evaluations included); the loop always "
                                              "takes its first step", within=real(0, 1e6, above=True))
    batch_size: int = setting(16, "sequences (or pairs) per optimizer step, over all processes",
                              within=whole(1, 2**20))
    micro_batch_size: int | None = setting(None, "sequences per forward pass; must divide the per-process batch",
                                           within=whole(1, 2**20))
    optimizer: str = setting("adamw", "adamw | muon (Muon for 2-D hidden weights, AdamW for the rest)")
    lr: float = setting(1e-3, "peak learning rate", within=real(0, 10, above=True))
    min_lr_ratio: float = setting(0.1, "the schedule ends at lr x this (0: at zero)", within=real(0, 1))
    schedule: str = setting("cosine", "learning-rate decay after warmup: cosine | linear | constant")
    warmup_steps: int | None = setting(None, "linear warmup steps (0: none; default: warmup_ratio of the run; longer "
                                             "than the run, the peak lr is never reached)", within=whole(0))
    warmup_ratio: float = setting(0.05, "warmup as a share of the run, rounded down to whole steps, when "
                                        "warmup_steps is not set (0: none)", within=real(0, 1))
    weight_decay: float = setting(0.1, "AdamW weight decay, on matrices only (0: none)", within=real(0, 10))
    beta1: float = setting(0.9, "AdamW beta1, the gradient average's decay (0: no average)",
                           within=real(0, 1, below=True))
    beta2: float = setting(0.95, "AdamW beta2, the squared gradient average's decay (0: no average)",
                           within=real(0, 1, below=True))
    eps: float = setting(1e-8, "AdamW epsilon", within=real(0, 1, above=True))
    muon_lr: float = setting(0.02, "Muon's learning rate", within=real(0, 10, above=True))
    muon_momentum: float = setting(0.95, "Muon's momentum (0: none)", within=real(0, 1, below=True))
    grad_clip: float = setting(1.0, "clip the gradient norm to this; 0 disables clipping", within=real(0, 1e6))
    eval_every: int = setting(200, "steps between evaluations (and checkpoints); the last step is always evaluated",
                              within=whole(1))
    eval_batches: int = setting(20, "validation batches per evaluation (at most: a smaller split gives fewer)",
                                within=whole(1))
    early_stop_metric: str = setting("val/loss", "the evaluation metric that picks best.pt and early stopping")
    early_stop_patience: int = setting(0, "evaluations without improvement before stopping; 0 disables",
                                       within=whole(0))
    checkpoint_every: int = setting(0, "steps between extra last.pt checkpoints; 0: at every evaluation only",
                                    within=whole(0))
    log_every: int = setting(10, "steps between metric rows (more than the run's steps: none)", within=whole(1))
    device: str = setting("auto", "auto | cpu | cuda | cuda:N | mps")
    precision: str = setting("auto", "auto (bf16 on CUDA, float32 on CPU) | fp32 | bf16 | fp16")
    compile: bool = setting(False, "torch.compile each block")
    grad_checkpointing: bool = setting(False, "recompute activations in backward to save memory")
    parallel: str = setting("ddp", "under torchrun: ddp (a full copy per rank) | fsdp (FSDP2, parameters sharded)")
    seed: int = setting(1337, "seed for initialisation, data order, dropout and noise", within=whole(*SEEDS))
    num_samples: int = setting(4, "samples written to samples.txt at the end (0: none)", within=whole(0, 10_000))
    sample_tokens: int = setting(64, "new tokens per sample in samples.txt", within=whole(1, MAX_NEW_TOKENS))
    init_from: str = setting("", "start from a picolm run or checkpoint, or a GPT-2 (HF folder or hub name); its "
                                 "tokenizer too")
    hf_model: str = setting("", "or start from a Hugging Face causal LM: a hub name (gpt2) or a local directory")

    def validate(self) -> None:
        refuse_failed(range_checks(self), "train.")
        refuse_failed([
            (self.optimizer in ("adamw", "muon"), "optimizer", "must be adamw or muon"),
            (self.schedule in ("cosine", "linear", "constant"), "schedule", "must be cosine, linear or constant"),
            (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:"), "device",
             "must be auto, cpu, cuda, cuda:N or mps"),
            (self.precision in ("auto", "fp32", "bf16", "fp16"), "precision", "must be auto, fp32, bf16 or fp16"),
            (self.parallel in ("ddp", "fsdp"), "parallel", "must be ddp or fsdp"),
            (not (self.parallel == "fsdp" and self.optimizer == "muon"), "optimizer",
             "muon orthogonalises whole matrices, which fsdp shards: use adamw with train.parallel fsdp"),
            (self.micro_batch_size is None or self.batch_size % self.micro_batch_size == 0, "micro_batch_size",
             f"must divide batch_size={self.batch_size}"),
            (self.max_steps is not None or self.epochs is not None or self.max_minutes is not None,
             "max_steps", "set max_steps, epochs or max_minutes"),
            (not (self.init_from and self.hf_model), "hf_model", "set init_from or hf_model, not both"),
        ], "train.")
        if self.optimizer != "muon":
            defaults = TrainConfig()
            refuse_failed([(getattr(self, name) == getattr(defaults, name), name, "applies to train.optimizer muon "
                            "only") for name in ("muon_lr", "muon_momentum")], "train.")


@dataclass(frozen=True)
class LogConfig:
    backends: list[str] = setting(help="extra trackers: tensorboard, wandb (JSONL and CSV always)", factory=list)
    project: str = setting("picolm", "W&B project")
    run_name: str | None = setting(None, "tracker run name; default {architecture}-{dataset}-{size}-v{n}")
    progress: bool = setting(True, "console progress bar")

    def validate(self) -> None:
        for backend in self.backends:
            if backend not in ("tensorboard", "wandb"):
                raise PicolmError(f"unknown backend {backend!r} (tensorboard, wandb)", field="log.backends")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA (through peft) on a trained model: each adapted weight W becomes W + (alpha / rank) B A, only A and B
    train, and `picolm export` merges them into W."""

    rank: int = setting(0, "LoRA rank of the adapters on a starting model's linear layers (0: off, every weight "
                           "trains)", within=whole(0, 65536))
    alpha: float = setting(16.0, "LoRA: the update B A is scaled by alpha / rank", within=real(0, 1e6, above=True,
                                                                                              tiny=1e-4))
    dropout: float = setting(0.0, "LoRA: dropout on the adapters' input (0: none)", within=real(0, 1, below=True))
    targets: list[str] = setting(help="LoRA: the linear layers to adapt, by name (c_attn,c_proj); empty: every "
                                      "linear layer but the output head", factory=list)

    def validate(self) -> None:
        refuse_failed(range_checks(self), "lora.")
        if not self.rank:
            defaults = LoraConfig()
            refuse_failed([(getattr(self, name) == getattr(defaults, name), name, "applies to LoRA runs only (set "
                            "lora.rank)") for name in ("alpha", "dropout", "targets")], "lora.")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    log: LogConfig = field(default_factory=LogConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    # the settings a recipe or the command line named ("model.dropout", ...; a preset names its fields): a run that
    # starts from a trained model applies them to it or refuses them, and never drops one silently
    given: frozenset[str] = field(default=frozenset(), compare=False)

    def validate(self) -> None:
        for section in SECTIONS:
            getattr(self, section).validate()

    def to_dict(self) -> dict:
        return {section: dataclasses.asdict(getattr(self, section)) for section in SECTIONS}


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "objective": ObjectiveConfig,
            "log": LogConfig, "lora": LoraConfig}


def _coerce(value, annotation: str, key: str, where: dict):
    """Turn a YAML or command-line value into the field's declared type."""
    optional = "None" in annotation
    base = annotation.replace("| None", "").replace("None |", "").strip()
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise PicolmError("may not be empty", field=key, **where)
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            raise ValueError
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "str":
            return str(value)
        if base == "list[int]":
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list) or any(isinstance(v, bool) or isinstance(v, float) for v in items):
                raise ValueError
            return [int(v) for v in items if str(v).strip()]
        if base.startswith("list"):
            if isinstance(value, str):
                return [v for v in value.split(",") if v]
            if isinstance(value, list):
                return [str(v) for v in value]
            raise ValueError
    except (TypeError, ValueError):
        raise PicolmError(f"expected {base}, got {value!r}", field=key, **where) from None
    raise AssertionError(f"unhandled field type {annotation}")


def _type_name(cls, name: str) -> str:
    """The declared annotation of a dataclass field as a string such as 'int | None'."""
    return {f.name: f.type for f in dataclasses.fields(cls)}[name]


def apply_overrides(config: Config, overrides: dict[str, object], sources: dict[str, dict] | None = None) -> Config:
    """A new config: `config` with `{"model.n_layer": 4, ...}` applied; `model.preset` expands first so explicit keys
    win. Not validated (see `build_config`)."""
    sources = sources or {}
    overrides = dict(overrides)
    changes: dict[str, dict] = {section: {} for section in SECTIONS}
    preset = overrides.pop("model.preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise PicolmError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}",
                              field="model.preset", **sources.get("model.preset", {}))
        changes["model"].update(PRESETS[preset])
    for key, value in overrides.items():
        where = sources.get(key, {})
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise PicolmError(f"unknown setting (sections: {', '.join(SECTIONS)})", field=key, **where)
        cls = SECTIONS[section]
        if name not in {f.name for f in dataclasses.fields(cls)}:
            known = ", ".join(f.name for f in dataclasses.fields(cls))
            raise PicolmError(f"unknown field; {section} has: {known}", field=key, **where)
        changes[section][name] = _coerce(value, _type_name(cls, name), key, where)
    given = config.given | {f"{section}.{name}" for section, values in changes.items() for name in values}
    return dataclasses.replace(config, given=given, **{section: dataclasses.replace(getattr(config, section), **values)
                                                       for section, values in changes.items() if values})


def read_recipe(path: str | Path) -> tuple[dict[str, object], dict[str, dict]]:
    """Flatten a YAML recipe to dotted keys, remembering each key's line for error messages."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PicolmError("recipe not found", path=path) from None
    except UnicodeDecodeError:
        raise PicolmError("recipe is not UTF-8 text", path=path) from None
    try:
        root = yaml.compose(text)
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise PicolmError(f"not valid YAML ({getattr(exc, 'problem', exc)})", path=path,
                          line=mark.line + 1 if mark else None) from None
    values: dict[str, object] = {}
    lines: dict[str, dict] = {}
    if root is None:
        return values, lines
    if not isinstance(root, yaml.MappingNode):
        raise PicolmError(f"a recipe is a mapping of sections ({', '.join(SECTIONS)})", path=path, line=1)
    for key_node, section_node in root.value:
        section = key_node.value
        if not isinstance(section_node, yaml.MappingNode):
            raise PicolmError("expected a mapping of fields", path=path, line=key_node.start_mark.line + 1,
                              field=section)
        for name_node, _ in section_node.value:
            key = f"{section}.{name_node.value}"
            if not isinstance(document.get(section), dict) or name_node.value not in document[section]:
                raise PicolmError("unsupported key (write plain field names; no anchors, merges or numbers)",
                                  path=path, line=name_node.start_mark.line + 1, field=key)
            values[key] = document[section][name_node.value]
            lines[key] = {"path": path, "line": name_node.start_mark.line + 1}
    return values, lines


def build_config(recipe: str | Path | None = None, overrides: dict[str, object] | None = None) -> Config:
    """Defaults, then the recipe, then command-line overrides; validated."""
    values, sources = read_recipe(recipe) if recipe else ({}, {})
    values.update(overrides or {})
    config = apply_overrides(Config(), values, sources)
    config.validate()
    return config


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config saved with `to_dict` (a run's config.yaml or a checkpoint)."""
    return Config(**{name: cls(**data.get(name, {})) for name, cls in SECTIONS.items()})


def save_config(config: Config, path: Path) -> None:
    write_text_atomically(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def load_config(path: Path) -> Config:
    try:
        return config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (TypeError, AttributeError, yaml.YAMLError) as exc:  # AttributeError: a document that is no mapping
        raise PicolmError(f"not a picolm config ({exc})", path=path) from None


# ---------------------------------------------------------------- sampling

REMASKING = ("none", "low_confidence")
TEMPERATURE_SCHEDULES = ("constant", "linear", "cosine")


def option(default, help: str, applies: str = "", within: Range | None = None):
    """A sampling option; `applies` names the models it is for when not all (its sampler refuses it elsewhere);
    `within`: the numbers it takes."""
    return field(default=default, metadata={"help": help, "applies": applies, "range": within})


@dataclass(frozen=True)
class SamplingOptions:
    max_new_tokens: int = option(100, "new tokens to write", within=whole(1, MAX_NEW_TOKENS))
    temperature: float = option(0.8, "softmax temperature; 0 decodes greedily", within=real(0, 100, tiny=1e-4))
    top_k: int | None = option(None, "sample from the k most likely tokens (more than the vocabulary: all of them)",
                               within=whole(1, MAX_VOCAB))
    top_p: float | None = option(None, "sample from the smallest set of tokens reaching probability p (nucleus; a "
                                       "tiny p keeps only the most likely token)", within=real(0, 1, above=True))
    repetition_penalty: float = option(1.0, "> 1 discourages tokens already in the prompt or the output (CTRL)",
                                       "left-to-right models", within=real(0, 100, above=True, tiny=0.01))
    stop: tuple[str, ...] = option((), "stop before this text (repeatable)")
    seed: int | None = option(0, "random seed: the same seed and settings write the same text (None, in Python: "
                                 "a different sample every time)", within=whole(*SEEDS))
    steps: int | None = option(None, "diffusion models: denoising steps (default: one per new token)",
                               "diffusion models (mdlm, sdd)", within=whole(1, MAX_NEW_TOKENS))
    remasking: str = option("none", "masked diffusion: reveal masked tokens at random (none) or the most confident "
                                    "first (low_confidence)", "masked-diffusion models")
    block_length: int | None = option(None, "masked diffusion: denoise blocks of this many tokens left to right "
                                            "(semi-autoregressive)", "masked-diffusion models",
                                 within=whole(1, MAX_NEW_TOKENS))
    temperature_schedule: str = option("constant", "sdd: the temperature over the steps: constant, or linear / "
                                                   "cosine from 1.5x down to 0.5x --temperature", "sdd models")
    confidence_weighted: bool = option(False, "sdd: a position leaves the uniform mixture as fast as the model is "
                                              "sure of it", "sdd models")
    stochastic: bool = option(False, "sdd: draw each step's candidates from the prediction instead of keeping its "
                                     "top k", "sdd models")

    def validate(self) -> None:
        checks = range_checks(self) + [
            (all(self.stop), "stop", f"stop strings must not be empty (got {self.stop!r})"),
            (self.remasking in REMASKING, "remasking",
             f"must be one of {', '.join(REMASKING)} (got {self.remasking!r})"),
            (self.temperature_schedule in TEMPERATURE_SCHEDULES, "temperature_schedule",
             f"must be one of {', '.join(TEMPERATURE_SCHEDULES)} (got {self.temperature_schedule!r})"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise PicolmError(why, field=flag(name))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


COMMON_SAMPLING = tuple(f.name for f in dataclasses.fields(SamplingOptions) if not f.metadata["applies"])
