"""Set-up of a training run, before the loop: the data's task, what the run starts from (a picolm run, a GPT-2, a
Hugging Face model, or its own last checkpoint), the method family, the resolved config (the family's kind, the
vocabulary and the token ids the family adds), the model, the objective and the batches.

The user's config is validated once and never changed: `resolve` returns a new, resolved one. `picolm train
--dry-run` shares `resolve` (through `plan_config`) without allocating anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from picolm.checkpoint import find_checkpoint, load_checkpoint
from picolm.config import Config, ModelConfig
from picolm.data.examples import ExampleBatches, PairExamples, SFTExamples, in_order, load_examples
from picolm.data.loader import TokenWindows, check_split, train_windows, window_batches
from picolm.data.records import BadRows
from picolm.data.tokens import load_meta, load_split
from picolm.errors import PicolmError
from picolm.interop.lora import add_adapters
from picolm.loading import (LoadedModel, checkpoint_adapters, checkpoint_tokenizer, load_start,
                            model_config_from_checkpoint, with_run_settings)
from picolm.locks import LOCK_FILE
from picolm.methods import check_fresh_model, check_settings, family_for
from picolm.methods.family import Family, Objective
from picolm.models.build import build_model
from picolm.tokenizer import Tokenizer, load_tokenizer


@dataclass(frozen=True)
class Resolved:
    config: Config  # validated, with the family's kind, the vocabulary and the family's token ids filled in
    family: Family
    task: str  # what the data holds: text, sft or dpo
    notes: tuple[str, ...]  # worth printing before training


def resolve(config: Config, task: str, tokenizer: Tokenizer, start: ModelConfig | None = None,
            resume: bool = False) -> Resolved:
    """The family and the resolved config of a run on data of `task`, from `start`'s model (else the config's)."""
    fresh = start is None and not resume
    if fresh:
        check_fresh_model(config.model)
        if config.lora.rank:
            raise PicolmError("LoRA adapts a trained model's weights: start from one with --init-from or --hf-model",
                              field="lora.rank")
    model = start or config.model
    field = "train.init_from" if start is not None and config.train.init_from else "objective.kind"
    family = family_for(config.objective.kind, task, model, data=config.data.path, model_field=field)
    if start is not None and not resume:
        if not family.starts_from(start):
            raise PicolmError(f"{family.title} starts from scratch or from a {family.kind} run, not from this model",
                              field="train.init_from")
        model = settings_on_start(start, config.model, config.given)
    candidate = replace(config, model=model)
    notes = family.check(candidate, fresh)
    check_settings(config.objective, family)
    model = family.vocabulary(model, tokenizer, config.objective)
    model.validate()
    resolved = replace(config, model=model, objective=replace(config.objective, kind=family.kind))
    return Resolved(resolved, family, task, tuple(notes))


def settings_on_start(start: ModelConfig, wanted: ModelConfig, given: frozenset[str]) -> ModelConfig:
    """The starting model's config with the model settings the run names: dropout and a shorter context change;
    every other must be the start's, since a trained model's shape is fixed. None is dropped silently."""
    changes = {}
    for key in sorted(k for k in given if k.startswith("model.")):
        name = key.removeprefix("model.")
        value, theirs = getattr(wanted, name), getattr(start, name)
        if value == theirs:
            continue
        if name == "dropout" and start.arch == "hf":
            raise PicolmError("a Hugging Face model's modules read their own dropout settings: set them in its "
                              "config.json", field=key)
        if name == "block_size" and value > theirs:
            raise PicolmError(f"{value} is longer than the starting model's context of {theirs} (its positions end "
                              "there); a shorter one is fine", field=key)
        if name not in ("dropout", "block_size"):
            raise PicolmError(f"is {value!r} here but {theirs!r} in the starting model: a trained model keeps its "
                              "shape (only model.dropout and a shorter model.block_size can change)", field=key)
        changes[name] = value
    return replace(start, **changes)


def data_task(config: Config) -> tuple[dict, str]:
    meta = load_meta(config.data.path)
    return meta, meta.get("task", "text")


def last_checkpoint(run_dir: Path, resume: bool) -> Path:
    """The run's checkpoints/last.pt; a fresh run refuses a directory that holds a run, a resume one that does not."""
    last = run_dir / "checkpoints" / "last.pt"
    if run_dir.exists() and not run_dir.is_dir():
        raise PicolmError("exists and is not a directory", path=run_dir)
    if resume and not last.is_file():
        raise PicolmError("nothing to resume: no checkpoints/last.pt", path=run_dir)
    if not resume and last.exists():
        raise PicolmError("already holds a run; resume it with --resume or choose another --out", path=run_dir)
    if not resume and run_dir.is_dir() and not (run_dir / "config.yaml").exists() \
            and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise PicolmError("holds files but no picolm run (no config.yaml); refusing to write among them: choose a "
                          "new or empty --out", path=run_dir)
    return last


def data_tokenizer(config: Config, task: str, run_dir: Path | None = None) -> Tokenizer:
    """The run's own tokenizer (on resume), else the data's."""
    data_dir = Path(config.data.path)
    for directory in ([run_dir / "tokenizer"] if run_dir else []) + [data_dir / "tokenizer"]:
        if directory.is_dir():
            return load_tokenizer(directory)
    raise PicolmError(f"{task} data carries no tokenizer: start from a model with --init-from RUN_DIR, or prepare "
                      "the data with --tokenizer", path=data_dir)


def starting_model(config: Config, log=print) -> LoadedModel | None:
    """What the run starts from: a picolm checkpoint or a GPT-2 (`train.init_from`), or a Hugging Face model
    (`train.hf_model`), with its tokenizer; None for a model built from the config."""
    t = config.train
    if t.hf_model:
        from picolm.interop.hf import load_hf_model

        model, tokenizer = load_hf_model(t.hf_model)
        log(f"starting from the Hugging Face model {t.hf_model}")
        return LoadedModel(model, tokenizer, {}, Path(t.hf_model))
    if not t.init_from:
        return None
    loaded = load_start(t.init_from)
    origin = f"step {loaded.checkpoint.get('global_step', 0)}" if loaded.checkpoint \
        else "a GPT-2 imported as a picolm model"
    log(f"starting from {loaded.path} ({origin})")
    return loaded


def plan_config(config: Config) -> Config:
    """The resolved config a run would train with, for `--dry-run`: the starting model's config is read from its
    checkpoint, and nothing is allocated."""
    if config.train.hf_model:
        raise PicolmError("--dry-run plans picolm models; for a Hugging Face model see its config.json",
                          field="train.hf_model")
    meta, task = data_task(config)
    start = None
    if config.train.init_from:
        path = find_checkpoint(config.train.init_from)
        state = load_checkpoint(path, mmap=True)
        start, tokenizer = model_config_from_checkpoint(state, path), checkpoint_tokenizer(state, path)
    else:
        tokenizer = data_tokenizer(config, task)
    return resolve(config, task, tokenizer, start).config


@dataclass
class Run:
    """What the loop needs, set up: the resolved config and family, the tokenizer, the model (on the CPU), the
    objective, the training batches and the validation data, and the checkpoint to resume from."""

    resolved: Resolved
    meta: dict
    tokenizer: Tokenizer
    model: torch.nn.Module
    objective: Objective
    train_data: TokenWindows | ExampleBatches
    val_tokens: np.ndarray | None
    val_kinds: np.ndarray | None
    val_examples: SFTExamples | PairExamples | None
    state: dict | None  # the checkpoint being resumed

    @property
    def config(self) -> Config:
        return self.resolved.config

    @property
    def family(self) -> Family:
        return self.resolved.family

    def val_batches(self, batch_size: int, limit: int):
        """The validation batches of one evaluation (at most `limit` windows or examples)."""
        c = self.config
        if self.val_examples is None:
            return window_batches(self.val_tokens, c.model.block_size, batch_size, limit, self.val_kinds,
                                  self.tokenizer.eos_id)
        return in_order(self.val_examples, batch_size, self.tokenizer.eos_id, limit=limit,
                        collate=self.family.collate)

    def examples(self) -> dict[str, SFTExamples | PairExamples]:
        """The example splits by name (none for text data)."""
        if self.val_examples is None:
            return {}
        return {"train": self.train_data.examples, "val": self.val_examples}


def prepare(config: Config, run_dir: Path, resume: bool, rank: int = 0, world_size: int = 1, log=print) -> Run:
    """Everything up to the loop, checked before anything is written."""
    meta, task = data_task(config)
    last = last_checkpoint(run_dir, resume)
    state = load_checkpoint(last) if resume else None
    start = starting_model(config, log) if not resume or config.train.hf_model else None
    tokenizer = start.tokenizer if start else data_tokenizer(config, task, run_dir if resume else None)
    start_model = start.model.config if start else None
    if resume and config.train.init_from and not start:  # the run's model is its start's, as its checkpoint says
        start_model = model_config_from_checkpoint(state, last)
    if resume:
        check_same_adapters(config, state, last)
    resolved = resolve(config, task, tokenizer, start_model, resume)
    for note in resolved.notes:
        log(f"note: {note}")
    config, family = resolved.config, resolved.family
    objective = family.objective(config, tokenizer, task)
    if resume and objective.needs_starting_model and config.train.init_from:
        start = starting_model(config, log)
    torch.manual_seed(config.train.seed)
    model = with_run_settings(start.model, config.model) if start else build_model(config.model)
    if config.lora.rank:
        model = add_adapters(model, config.lora, log)
    check_metric(config, family, task, meta.get("kinds"))
    train_data, val_tokens, val_kinds, val_examples = load_data(config, family, task, tokenizer, rank, world_size, log)
    return Run(resolved, meta, tokenizer, model, objective, train_data, val_tokens, val_kinds, val_examples, state)


def check_same_adapters(config: Config, state: dict, path: Path) -> None:
    """A resumed run keeps its LoRA settings: its checkpoint holds adapters of that shape on those layers."""
    saved = asdict(checkpoint_adapters(state, path))
    for name, value in asdict(config.lora).items():
        if value != saved[name]:
            raise PicolmError(f"cannot change it when resuming (the run has {saved[name]!r})", path=path,
                              field=f"lora.{name}")


def check_metric(config: Config, family: Family, task: str, kind_names) -> None:
    known = ["val/" + name for name in family.metric_names(task, kind_names)]
    if config.train.early_stop_metric not in known:
        raise PicolmError(f"not an evaluation metric; choose from {', '.join(known)}", field="train.early_stop_metric")


def load_data(config: Config, family: Family, task: str, tokenizer: Tokenizer, rank: int, world_size: int, log):
    """(training batches, validation tokens, their kinds, validation examples)."""
    data_dir, block = Path(config.data.path), config.model.block_size
    if task == "text":
        train = train_windows(data_dir, block, seed=config.train.seed, rank=rank, world_size=world_size)
        tokens, kinds = load_split(data_dir, "val", tokenizer)
        check_split(tokens, data_dir / "val.bin", config.model.vocab_size, block)
        return train, tokens, kinds, None
    bad = BadRows(skip=config.data.skip_bad_rows)
    examples = {split: load_examples(data_dir, split, task, tokenizer, block, bad, family.predicts_next)
                for split in ("train", "val")}
    bad.report(log)
    if examples["train"].truncated:
        log(f"note: {examples['train'].truncated} training examples were cut to fit the context of {block}")
    train = ExampleBatches(examples["train"], tokenizer.eos_id, seed=config.train.seed, rank=rank,
                           world_size=world_size, collate=family.collate)
    return train, None, None, examples["val"]
