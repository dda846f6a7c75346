"""Configuration: dataclasses, presets, YAML recipes and dotted `--section.key value` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from picolm.errors import PicolmError

ATTENTION_KINDS = ("softmax", "linear")
FEATURE_MAP_KINDS = ("elu", "relu")  # linear attention kernels phi(x)
POSITION_KINDS = ("learned", "rope", "none")
MLP_KINDS = ("gelu", "swiglu")
NORM_KINDS = ("layernorm", "rmsnorm")
ARCHITECTURES = ("gpt", "hf", "sdd")  # hf: a Hugging Face causal LM started from with train.hf_model; sdd: sparse
# distribution diffusion (picolm/models/sdd.py)


@dataclass
class ModelConfig:
    arch: str = "gpt"
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 256
    vocab_size: int = 0  # 0: taken from the data's tokenizer
    dropout: float = 0.0
    bias: bool = True
    attention: str = "softmax"
    position: str = "learned"
    causal: bool = True
    mlp: str = "gelu"
    norm: str = "layernorm"  # the blocks' two norms and the final one: layernorm | rmsnorm (no bias)
    tie_weights: bool = True
    rope_base: float = 10000.0
    feature_map: str = "elu"  # linear attention: phi(x) = elu(x) + 1 | relu
    chunk_size: int = 64  # linear attention: tokens per chunk of the causal parallel form
    differential: bool = False  # feed the blocks e_t - e_{t-1}; add e_t back before the final norm
    mask_id: int = -1  # masked diffusion: the mask token's id (set by mdlm training; the head never predicts it)
    ignore_id: int = -1  # sdd: the IGNORE (padding) token's id, the last of the vocabulary (set by sdd training)
    sdd_k: int = 0  # sdd: candidates per position the sampler uses, the largest k trained (set by sdd training)

    def validate(self) -> None:
        checks = [
            (self.arch in ARCHITECTURES, "arch", f"must be one of {', '.join(ARCHITECTURES)}"),
            (self.attention in ATTENTION_KINDS, "attention", f"must be one of {', '.join(ATTENTION_KINDS)}"),
            (self.position in POSITION_KINDS, "position", f"must be one of {', '.join(POSITION_KINDS)}"),
            (self.mlp in MLP_KINDS, "mlp", f"must be one of {', '.join(MLP_KINDS)}"),
            (self.norm in NORM_KINDS, "norm", f"must be one of {', '.join(NORM_KINDS)}"),
            (self.feature_map in FEATURE_MAP_KINDS, "feature_map", f"must be one of {', '.join(FEATURE_MAP_KINDS)}"),
            (self.chunk_size > 0, "chunk_size", "must be positive"),
            (self.n_layer > 0 and self.n_head > 0 and self.n_embd > 0, "n_layer", "sizes must be positive"),
            (self.n_embd % self.n_head == 0, "n_embd", f"{self.n_embd} is not divisible by n_head={self.n_head}"),
            (self.block_size > 0, "block_size", "must be positive"),
            (0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)"),
            (self.mask_id < 0 or (self.vocab_size <= 0 or self.mask_id == self.vocab_size - 1), "mask_id",
             "must be the last id of the vocabulary"),
            (self.ignore_id < 0 or (self.vocab_size <= 0 or self.ignore_id == self.vocab_size - 1), "ignore_id",
             "must be the last id of the vocabulary"),
            (self.sdd_k >= 0, "sdd_k", "must be positive (0: set by sdd training)"),
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
        for ok, name, why in checks:
            if not ok:
                raise PicolmError(why, field=f"model.{name}")


# Parameter counts in the comments exclude the token embedding (it depends on the vocabulary).
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=256),  # ~0.8M
    "small": dict(n_layer=8, n_head=8, n_embd=512, block_size=512),  # ~25M
    "medium": dict(n_layer=10, n_head=10, n_embd=640, block_size=1024),  # ~50M
    "large": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),  # ~85M; 124M with GPT-2's vocabulary
    "xl": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),  # ~300M
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, dropout=0.0,
                 bias=True, position="learned", mlp="gelu", attention="softmax"),
    "gpt2-dropout": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, dropout=0.1,
                         bias=True, position="learned", mlp="gelu", attention="softmax"),
}


@dataclass
class DataConfig:
    path: str = ""  # a directory written by `picolm prepare`
    skip_bad_rows: bool = False  # SFT/DPO rows that cannot be used: report and skip them instead of stopping


OBJECTIVE_KINDS = ("auto", "next_token", "sft", "dpo", "mdlm", "sdd")
PREFERENCE_LOSSES = ("sigmoid", "ipo", "hinge")


@dataclass
class ObjectiveConfig:
    kind: str = "auto"  # auto (from the data: text -> next_token, sft, dpo) | next_token | sft | dpo | mdlm
    beta: float = 0.1  # DPO: strength of the pull toward the reference
    loss: str = "sigmoid"  # DPO loss: sigmoid (DPO; cDPO with label_smoothing) | ipo | hinge
    label_smoothing: float = 0.0  # conservative DPO: the assumed rate of flipped preference labels
    length_normalize: bool = False  # DPO: mean instead of summed response log-probabilities (always for ipo)
    reference: str = "precomputed"  # precomputed (once, before training; the reference model is dropped) | live
    monitor: str = ""  # SFT: a DPO data directory whose chosen/rejected mean log-probabilities are logged
    eps: float = 1e-3  # mdlm: the smallest noise level t (t ~ U(eps, 1))
    sdd_k: int = 4  # sdd: weighted candidate tokens per position (fixed k)
    sdd_k_curriculum: list[int] = field(default_factory=list)  # sdd: k per equal share of the steps, e.g. 1,2,4,8

    def validate(self) -> None:
        checks = [
            (self.kind in OBJECTIVE_KINDS, "kind", f"must be one of {', '.join(OBJECTIVE_KINDS)}"),
            (self.loss in PREFERENCE_LOSSES, "loss", f"must be one of {', '.join(PREFERENCE_LOSSES)}"),
            (self.beta > 0, "beta", "must be positive"),
            (0.0 <= self.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5)"),
            (self.reference in ("precomputed", "live"), "reference", "must be precomputed or live"),
            (0.0 < self.eps < 1.0, "eps", "must be in (0, 1)"),
            (self.sdd_k >= 1, "sdd_k", "must be at least 1"),
            (all(k >= 1 for k in self.sdd_k_curriculum), "sdd_k_curriculum", "every k must be at least 1"),
            (all(a < b for a, b in zip(self.sdd_k_curriculum, self.sdd_k_curriculum[1:])), "sdd_k_curriculum",
             f"must increase (got {self.sdd_k_curriculum})"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise PicolmError(why, field=f"objective.{name}")


@dataclass
class TrainConfig:
    max_steps: int | None = 1000
    epochs: float | None = None  # when set, overrides max_steps
    max_minutes: float | None = None  # wall-time budget; whichever limit comes first stops the run
    batch_size: int = 16  # sequences per optimizer step
    micro_batch_size: int | None = None  # sequences per forward pass; batch_size must be a multiple
    optimizer: str = "adamw"  # adamw | muon (Muon for 2-D hidden weights, AdamW for the rest)
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_steps: int | None = None
    warmup_ratio: float = 0.05  # used when warmup_steps is not set
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    eval_every: int = 200
    eval_batches: int = 20
    early_stop_metric: str = "val/loss"
    early_stop_patience: int = 0  # evaluations without improvement before stopping; 0 disables
    checkpoint_every: int = 0  # 0: checkpoint at every evaluation
    log_every: int = 10
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False
    grad_checkpointing: bool = False
    parallel: str = "ddp"  # under torchrun: ddp (a full copy per rank) | fsdp (FSDP2, parameters sharded)
    seed: int = 1337
    num_samples: int = 4  # samples written to samples.txt at the end
    sample_tokens: int = 64
    init_from: str = ""  # start from a picolm run or checkpoint, or a GPT-2 (HF folder or hub name); its tokenizer too
    hf_model: str = ""  # or from a Hugging Face causal LM: a hub name (gpt2) or a local directory

    def validate(self) -> None:
        checks = [
            (self.optimizer in ("adamw", "muon"), "optimizer", "must be adamw or muon"),
            (self.schedule in ("cosine", "linear", "constant"), "schedule", "must be cosine, linear or constant"),
            (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:"), "device",
             "must be auto, cpu, cuda, cuda:N or mps"),
            (self.precision in ("auto", "fp32", "bf16", "fp16"), "precision", "must be auto, fp32, bf16 or fp16"),
            (self.parallel in ("ddp", "fsdp"), "parallel", "must be ddp or fsdp"),
            (not (self.parallel == "fsdp" and self.optimizer == "muon"), "optimizer",
             "muon orthogonalises whole matrices, which fsdp shards: use adamw with train.parallel fsdp"),
            (self.batch_size > 0, "batch_size", "must be positive"),
            (self.micro_batch_size is None or (self.micro_batch_size > 0
                                               and self.batch_size % self.micro_batch_size == 0),
             "micro_batch_size", f"must divide batch_size={self.batch_size}"),
            (self.max_steps is not None or self.epochs is not None or self.max_minutes is not None,
             "max_steps", "set max_steps, epochs or max_minutes"),
            (self.lr > 0, "lr", "must be positive"),
            (self.eval_every > 0, "eval_every", "must be positive"),
            (self.eval_batches > 0, "eval_batches", "must be positive"),
            (self.log_every > 0, "log_every", "must be positive"),
            (not (self.init_from and self.hf_model), "hf_model", "set init_from or hf_model, not both"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise PicolmError(why, field=f"train.{name}")


@dataclass
class LogConfig:
    backends: list[str] = field(default_factory=list)  # tensorboard, wandb (JSONL and CSV always)
    project: str = "picolm"  # W&B project
    run_name: str | None = None  # tracker run name; default {architecture}-{dataset}-{size}-v{n}
    progress: bool = True  # console progress bar


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        self.model.validate()
        self.train.validate()
        self.objective.validate()
        self._check_combinations()
        for backend in self.log.backends:
            if backend not in ("tensorboard", "wandb"):
                raise PicolmError(f"unknown backend {backend!r} (tensorboard, wandb)", field="log.backends")

    def _check_combinations(self) -> None:
        """Settings that are each valid but do not fit together."""
        diffusion = self.objective.kind == "mdlm"
        checks = [
            (not (diffusion and self.model.causal), "model.causal",
             "masked diffusion needs a bidirectional model: set model.causal false"),
            (not (diffusion and self.model.attention == "linear"), "model.attention",
             "linear attention is built in its causal (chunked and recurrent) form; masked diffusion needs softmax"),
            (not (diffusion and self.train.hf_model), "train.hf_model",
             "a Hugging Face causal LM cannot be a masked-diffusion backbone"),
            (diffusion or self.model.mask_id < 0, "model.mask_id",
             "a mask token belongs to masked diffusion (objective.kind mdlm), which sets it"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise PicolmError(why, field=name)
        self._check_sdd()

    def _check_sdd(self) -> None:
        """Sparse distribution diffusion (picolm/models/sdd.py): what it needs and what it cannot do."""
        m, o = self.model, self.objective
        sdd = m.arch == "sdd"
        final_k = sdd_final_k(o)
        checks = [
            (not (sdd and o.kind not in ("auto", "sdd")), "objective.kind",
             f"an sdd model trains with the sdd objective, not {o.kind} (leave objective.kind auto or set sdd)"),
            (not (o.kind == "sdd" and not sdd), "model.arch", "the sdd objective needs model.arch sdd"),
            (not (sdd and m.causal), "model.causal",
             "sparse distribution diffusion denoises every position from both sides: set model.causal false "
             "(an sdd model has no causal form, no KV cache and no left-to-right decoding)"),
            (not (sdd and m.attention == "linear"), "model.attention",
             "linear attention is built in its causal form; sdd needs softmax attention"),
            (not (sdd and m.differential), "model.differential", "differential inputs do not apply to sdd"),
            (not (sdd and self.train.hf_model), "train.hf_model",
             "a Hugging Face causal LM cannot be an sdd model"),
            (sdd or (m.ignore_id < 0 and m.sdd_k == 0), "model.ignore_id" if m.ignore_id >= 0 else "model.sdd_k",
             "belongs to sdd models (model.arch sdd); sdd training sets it"),
            (not sdd or m.sdd_k in (0, final_k), "model.sdd_k",
             f"is set by training from the objective's k ({final_k}); set objective.sdd_k or "
             "objective.sdd_k_curriculum instead"),
            (not o.sdd_k_curriculum or sdd, "objective.sdd_k_curriculum", "applies to sdd models (model.arch sdd)"),
            (sdd or o.sdd_k == ObjectiveConfig.sdd_k, "objective.sdd_k", "applies to sdd models (model.arch sdd)"),
            (not (sdd and m.vocab_size > 0 and final_k > m.vocab_size),
             "objective.sdd_k_curriculum" if o.sdd_k_curriculum else "objective.sdd_k",
             f"k = {final_k} candidates per position is more than the vocabulary of {m.vocab_size}"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise PicolmError(why, field=name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sdd_final_k(objective: ObjectiveConfig) -> int:
    """The largest k an sdd run trains with (the curriculum's last, else objective.sdd_k): the sampler's k."""
    return objective.sdd_k_curriculum[-1] if objective.sdd_k_curriculum else objective.sdd_k


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "objective": ObjectiveConfig,
            "log": LogConfig}


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
    """Apply `{"model.n_layer": 4, ...}`; `model.preset` expands first so explicit keys win."""
    sources = sources or {}
    overrides = dict(overrides)
    preset = overrides.pop("model.preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise PicolmError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}",
                              field="model.preset", **sources.get("model.preset", {}))
        for name, value in PRESETS[preset].items():
            setattr(config.model, name, value)
    for key, value in overrides.items():
        where = sources.get(key, {})
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise PicolmError(f"unknown setting (sections: {', '.join(SECTIONS)})", field=key, **where)
        cls = SECTIONS[section]
        if name not in {f.name for f in dataclasses.fields(cls)}:
            known = ", ".join(f.name for f in dataclasses.fields(cls))
            raise PicolmError(f"unknown field; {section} has: {known}", field=key, **where)
        setattr(getattr(config, section), name, _coerce(value, _type_name(cls, name), key, where))
    return config


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
        raise PicolmError("a recipe is a mapping of sections (model, data, train, objective, log)", path=path, line=1)
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
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")


def load_config(path: Path) -> Config:
    try:
        return config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except (TypeError, yaml.YAMLError) as exc:
        raise PicolmError(f"not a picolm config ({exc})", path=path) from None
