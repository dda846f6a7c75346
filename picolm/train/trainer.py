"""The one training loop: accumulation, precision, clipping, schedule, eval, checkpoint, resume, DDP/FSDP."""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from picolm.config import Config, save_config
from picolm.data.examples import ExampleBatches, in_order, load_examples
from picolm.data.loader import check_split, train_windows
from picolm.data.records import BadRows
from picolm.data.pack import load_meta
from picolm.errors import PicolmError, TrainingStopped
from picolm.eval.lm import evaluate_tokens, evaluation_metric_names, load_split
from picolm.models.diffusion import evaluate_nelbo, is_diffusion
from picolm.models.sdd import SDD_METRICS, evaluate_sdd, prepare_vocabulary
from picolm.models.loading import (LoadedModel, build_model, describe_mismatch, load_start,
                                   model_config_from_checkpoint)
from picolm.tokenizer import load_tokenizer
from picolm.train.checkpoint import load_checkpoint, save_checkpoint, save_weights
from picolm.train.distributed import (Distributed, full_model_state, full_optimizer_state, load_full_model_state,
                                      load_full_optimizer_state)
from picolm.train.objectives import (OBJECTIVES, PREFERENCE_METRICS, MaskedDiffusion, Preference, build_objective,
                                     evaluate_objective, precompute_reference, sequence_log_probs)
from picolm.train.optim import build_optimizers, lr_factor, set_lr, warmup_steps
from picolm.train.tracking import QuietTracker, Tracker, run_name, summarize

MONITOR_PAIRS = 64  # held-out pairs the SFT monitor scores at each evaluation


def resolve_device(name: str, field: str = "train.device") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PicolmError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N, mps)", field=field) from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise PicolmError(f"{name} is not available on this machine", field=field)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PicolmError("mps is not available on this machine", field=field)
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for float32. CPUs default to float32: their bf16 matmuls are far slower."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if precision == "fp16" and device.type == "cpu":
        raise PicolmError("fp16 autocast needs a GPU", field="train.precision")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def metric_improved(value: float, best: float | None, metric: str) -> bool:
    """Lower is better for losses and perplexities, higher for accuracies."""
    if best is None:
        return True
    return value < best if metric.endswith(("loss", "perplexity", "perplexity_bound")) else value > best


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    best_metric: float | None
    final_metrics: dict
    stop_reason: str


class StopFlag:
    """Ctrl-C asks the loop to stop after the current step and save; a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class Trainer:
    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, objective=None, log=print):
        self.distributed = Distributed(config.train.parallel)
        self.config, self.run_dir = config, Path(run_dir)
        self.log = log if self.distributed.is_main else (lambda *args, **kwargs: None)
        self.meta = load_meta(config.data.path)
        self.data_dir = Path(config.data.path)
        self.task = self.meta.get("task", "text")
        self.device = self.distributed.device(resolve_device(config.train.device))
        self.micro_size, self.micro_batches = self._micro_batching()
        self.distributed.start(self.device)
        self.autocast_dtype = resolve_precision(config.train.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.objective = objective or build_objective(self._objective_kind(), config.objective)
        start = self._starting_model(resume)
        self.tokenizer = self._tokenizer(start, resume)
        if self.sdd:  # the IGNORE token and the sampler's k (picolm/models/sdd.py)
            prepare_vocabulary(config.model, config.objective, self.tokenizer)
            self.objective.set_tokenizer(self.tokenizer)
        self._check_vocabulary()
        torch.manual_seed(config.train.seed)
        self.model = (start.model if start else build_model(config.model)).to(self.device).train()
        if self.distributed.rank:  # the same initial weights on every rank, then each its own dropout and noise
            torch.manual_seed(config.train.seed + self.distributed.rank)
        self.model.grad_checkpointing = config.train.grad_checkpointing
        if isinstance(self.objective, Preference) and config.objective.reference == "live":
            self.objective.keep_reference(self.model)
        self.train_model = self.distributed.wrap(self.model, self.device)  # what the training step calls
        self.optimizers = build_optimizers(self.model, config.train, self.device.type)
        self._load_data()
        self._check_objective_settings()
        self.global_step, self.tokens_seen, self.elapsed = 0, 0, 0.0
        self.best_metric, self.best_loss, self.evals_without_improvement = None, None, 0
        self._prepare_run_dir(resume)
        self._reference_log_probs()
        if config.train.compile:
            for block in getattr(self.model, "blocks", None) or [self.model]:
                block.compile()

    # -- set-up -------------------------------------------------------------------------------------
    def _micro_batching(self) -> tuple[int, int]:
        """(micro-batch size, micro-batches per step) of each rank: `train.batch_size` is the whole step's batch,
        split evenly over the ranks and then into micro-batches."""
        t, world = self.config.train, self.distributed.world_size
        if t.batch_size % world:
            raise PicolmError(f"{t.batch_size} does not split evenly over {world} processes", field="train.batch_size")
        per_rank = t.batch_size // world
        micro = min(t.micro_batch_size or per_rank, per_rank)
        if per_rank % micro:
            raise PicolmError(f"must divide the per-process batch of {per_rank} (batch_size {t.batch_size} over "
                              f"{world} processes)", field="train.micro_batch_size")
        return micro, per_rank // micro

    def _objective_kind(self) -> str:
        kind = self.config.objective.kind
        natural = {"text": "next_token", "sft": "sft", "dpo": "dpo"}[self.task]
        if self.config.model.arch == "sdd":
            if self.task != "text":
                raise PicolmError(f"sdd training needs text data, but {self.data_dir} holds {self.task} data",
                                  field="model.arch")
            return "sdd"
        if kind == "auto":
            return natural
        if OBJECTIVES[kind].task != self.task:
            raise PicolmError(f"{kind} training needs {OBJECTIVES[kind].task} data, but {self.data_dir} holds "
                              f"{self.task} data", field="objective.kind")
        return kind

    def _starting_model(self, resume: bool):
        """The picolm checkpoint or GPT-2 (`train.init_from`) or Hugging Face model (`train.hf_model`) to start from;
        its model config replaces the recipe's."""
        t = self.config.train
        if t.hf_model:  # rebuilt on resume too: the checkpoint then replaces its weights
            from picolm.models.hf import load_hf_model

            model, tokenizer = load_hf_model(t.hf_model)
            self.config.model = model.config
            self.log(f"starting from the Hugging Face model {t.hf_model}")
            return LoadedModel(model, tokenizer, {}, Path(t.hf_model))
        if not t.init_from:
            return None
        if resume and not (isinstance(self.objective, Preference) and self.config.objective.reference == "live"):
            # a resumed run restores its own weights (only a live reference needs the start again)
            last = self.run_dir / "checkpoints" / "last.pt"
            if last.is_file():
                self.config.model = model_config_from_checkpoint(load_checkpoint(last, mmap=True), last)
            return None
        loaded = load_start(t.init_from)
        if is_diffusion(loaded.model) != self.diffusion:
            why = ("masked diffusion starts from scratch or from a masked-diffusion run, not a left-to-right model"
                   if self.diffusion else "a masked-diffusion model trains on only with objective.kind mdlm")
            raise PicolmError(why, field="train.init_from")
        self.config.model = loaded.model.config
        origin = f"step {loaded.checkpoint.get('global_step', 0)}" if loaded.checkpoint \
            else "a GPT-2 imported as a picolm model"
        self.log(f"starting from {loaded.path} ({origin})")
        return loaded

    def _tokenizer(self, start, resume: bool):
        """The starting model's tokenizer, else the run's (on resume), else the data's."""
        if start is not None:
            return start.tokenizer
        for directory in [self.run_dir / "tokenizer"] * resume + [self.data_dir / "tokenizer"]:
            if directory.is_dir():
                return load_tokenizer(directory)
        raise PicolmError(f"{self.task} data carries no tokenizer: start from a model with --init-from RUN_DIR, or "
                          "prepare the data with --tokenizer", path=self.data_dir)

    def _check_vocabulary(self) -> None:
        """Masked diffusion adds a mask token after the tokenizer's ids: the last id of the model's vocabulary."""
        model, vocab = self.config.model, self.tokenizer.vocab_size
        extra = int(self.diffusion)
        if model.vocab_size == 0:
            model.vocab_size = vocab + extra
        elif model.vocab_size < vocab + extra:
            raise PicolmError(f"{model.vocab_size} is smaller than the tokenizer's {vocab}"
                              f"{' plus the mask token' if extra else ''}: token ids would fall outside the "
                              "embedding table", field="model.vocab_size")
        if self.diffusion:
            model.mask_id = model.vocab_size - 1

    @property
    def sdd(self) -> bool:
        return self.config.model.arch == "sdd"

    @property
    def diffusion(self) -> bool:
        return isinstance(self.objective, MaskedDiffusion)

    def _load_data(self) -> None:
        c = self.config
        self.monitor_examples = None
        if c.objective.monitor:
            if load_meta(c.objective.monitor).get("task") != "dpo":
                raise PicolmError("the monitor reads preference pairs: name a DPO data directory",
                                  field="objective.monitor")
            self.monitor_examples = load_examples(c.objective.monitor, "val", "dpo", self.tokenizer,
                                                  c.model.block_size, BadRows(skip=True))
        if self.task == "text":
            self.train_data = train_windows(self.data_dir, c.model.block_size, seed=c.train.seed,
                                            rank=self.distributed.rank, world_size=self.distributed.world_size)
            self.val_tokens, self.val_kinds = load_split(self.data_dir, "val")
            check_split(self.val_tokens, self.data_dir / "val.bin", c.model.vocab_size, c.model.block_size)
            return
        bad = BadRows(skip=c.data.skip_bad_rows)
        train = load_examples(self.data_dir, "train", self.task, self.tokenizer, c.model.block_size, bad)
        self.val_examples = load_examples(self.data_dir, "val", self.task, self.tokenizer, c.model.block_size, bad)
        bad.report(self.log)
        if train.truncated:
            self.log(f"note: {train.truncated} training examples were cut to fit the context of {c.model.block_size}")
        self.train_data = ExampleBatches(train, self.tokenizer.eos_id, seed=c.train.seed, rank=self.distributed.rank,
                                         world_size=self.distributed.world_size)

    def _reference_log_probs(self) -> None:
        """DPO with a precomputed reference: the starting policy's log-probabilities, once, before training
        (a resumed run has them from its checkpoint)."""
        if not (isinstance(self.objective, Preference) and self.config.objective.reference == "precomputed"):
            return
        for examples in (self.train_data.examples, self.val_examples):
            if examples.reference is None:
                t = self.config.train
                started = time.perf_counter()
                examples.reference = precompute_reference(self.model, examples, 2 * (t.micro_batch_size or t.batch_size),
                                                          self.tokenizer.eos_id, self.device, self.autocast,
                                                          self.objective.length_normalize)
                self.log(f"reference log-probabilities of {len(examples)} pairs in "
                         f"{time.perf_counter() - started:.1f} s")

    def evaluation_names(self) -> list[str]:
        if self.sdd:
            return list(SDD_METRICS)
        if self.diffusion:
            return ["loss", "perplexity_bound", "masked_accuracy"]
        if self.task == "text":
            return evaluation_metric_names(self.meta.get("kinds"))
        return list(PREFERENCE_METRICS) if self.task == "dpo" else ["loss", "perplexity", "accuracy"]

    def _check_objective_settings(self) -> None:
        if getattr(self.objective, "needs_causal", False) and not self.config.model.causal:
            raise PicolmError("next-token training needs a causal model: with causal false it would see its "
                              "targets", field="model.causal")
        if getattr(self.objective, "needs_bidirectional", False) and self.config.model.causal:
            raise PicolmError("masked diffusion needs a bidirectional model (model.causal false)", field="model.causal")
        if self.diffusion and self.config.model.position == "learned":
            self.log("note: with learned positions a bidirectional model is slow to use its neighbours (on numeric "
                     "data it stayed at the unigram level for 1,500 steps); model.position rope learns from the start")
        known = ["val/" + name for name in self.evaluation_names()]
        if self.config.train.early_stop_metric not in known:
            raise PicolmError(f"not an evaluation metric; choose from {', '.join(known)}",
                              field="train.early_stop_metric")

    def _prepare_run_dir(self, resume: bool) -> None:
        last = self.run_dir / "checkpoints" / "last.pt"
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise PicolmError("exists and is not a directory", path=self.run_dir)
        if resume:
            if not last.is_file():
                raise PicolmError("nothing to resume: no checkpoints/last.pt", path=self.run_dir)
            self._restore(load_checkpoint(last, map_location=self.device))
        elif last.exists():
            raise PicolmError("already holds a run; resume it with --resume or choose another --out",
                              path=self.run_dir)
        if not resume and not self.config.log.run_name:
            self.config.log.run_name = run_name(self.config, str(self.meta.get("source", self.data_dir.name)),
                                                self.run_dir.parent)
        with self.distributed.main_first():
            if self.distributed.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                save_config(self.config, self.run_dir / "config.yaml")
                self.tokenizer.save(self.run_dir / "tokenizer")

    def _restore(self, state: dict) -> None:
        if state["architecture"] != self.config.model.arch:
            raise PicolmError(f"checkpoint is a {state['architecture']!r} model, the config asks for "
                              f"{self.config.model.arch!r}", path=self.run_dir, field="model.arch")
        mismatch = describe_mismatch(self.config.model, state["model_config"])
        if mismatch:
            raise PicolmError(f"cannot resume with a different model: {mismatch}", path=self.run_dir)
        saved_optimizer = state["train_config"]["train"]["optimizer"]
        if saved_optimizer != self.config.train.optimizer:
            raise PicolmError(f"cannot change it when resuming (the run has {saved_optimizer!r})",
                              path=self.run_dir, field="train.optimizer")
        load_full_model_state(self.model, state["model_state_dict"], self.distributed)
        for optimizer, saved in zip(self.optimizers, state["optimizer_state_dict"], strict=True):
            load_full_optimizer_state(self.model, optimizer, saved, self.distributed)
        if state.get("scaler_state_dict"):
            self.scaler.load_state_dict(state["scaler_state_dict"])
        self.global_step, self.tokens_seen = state["global_step"], state["tokens_seen"]
        if state["best_metric"] == self.config.train.early_stop_metric:
            self.best_metric, self.best_loss = state["best_val_loss"], state.get("best_loss")
            self.evals_without_improvement = state["evals_without_improvement"]
        self.elapsed = state["elapsed_seconds"]
        self.train_data.load_state_dict(state["data_state"])
        for split, examples in (("train", getattr(self.train_data, "examples", None)),
                                ("val", getattr(self, "val_examples", None))):
            if split in state.get("reference_log_probs", {}):
                examples.reference = state["reference_log_probs"][split]
        rng = state["rng_state"]
        ranks = rng.get("ranks") or []
        if len(ranks) == self.distributed.world_size:  # each rank's own generators (a distributed run)
            rng = ranks[self.distributed.rank]
        elif self.distributed.rank:  # another world size: rank 0 continues, the others start afresh
            rng = {"torch": torch.Generator().manual_seed(self.config.train.seed + self.distributed.rank).get_state()}
        torch.set_rng_state(rng["torch"].cpu())
        if self.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"].cpu())
        self.log(f"resumed {self.run_dir} at step {self.global_step}")

    def checkpoint_state(self) -> dict:
        """Everything a resume needs, with full weights; under torchrun every rank must call it (it gathers)."""
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None}
        ranks = self.distributed.gather(rng) if self.distributed.active else None
        return {
            "architecture": self.config.model.arch,
            "model_config": self._model_config_for_checkpoint(),
            "model_state_dict": full_model_state(self.model, self.distributed),
            "optimizer_state_dict": [full_optimizer_state(self.model, o, self.distributed) for o in self.optimizers],
            "scaler_state_dict": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "train_config": self.config.to_dict(),
            "global_step": self.global_step,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_metric,
            "best_metric": self.config.train.early_stop_metric,
            "best_loss": self.best_loss,
            "evals_without_improvement": self.evals_without_improvement,
            "elapsed_seconds": self.elapsed,
            "rng_state": {**rng, "ranks": ranks},
            "data_state": self.train_data.state_dict(),
            "reference_log_probs": self._saved_reference(),
            "tokenizer": self.tokenizer.to_dict(),
        }

    def save(self, *names: str) -> None:
        """checkpoints/{name}.pt for each name, with its weights as {name}.safetensors; written by rank 0 alone."""
        state = self.checkpoint_state()
        for name in names if self.distributed.is_main else ():
            path = self.run_dir / "checkpoints" / f"{name}.pt"
            save_weights(state, path.with_suffix(".safetensors"))
            save_checkpoint(state, path)

    def close(self, failed: bool = False) -> None:
        """Leave the torchrun process group (nothing to do in one process); the trainer is done with. After a
        failure on this rank there is no waiting for the others: torchrun stops them when this process exits."""
        if self.distributed.active:
            self.train_model = self.model = self.optimizers = None
        self.distributed.close(wait=not failed)

    def _model_config_for_checkpoint(self) -> dict:
        if self.config.model.arch == "hf":
            from picolm.models.hf import hf_checkpoint_config

            return hf_checkpoint_config(self.model)
        return self.config.to_dict()["model"]

    def _saved_reference(self) -> dict:
        if self.task != "dpo":
            return {}
        pairs = {"train": self.train_data.examples, "val": self.val_examples}
        return {split: examples.reference for split, examples in pairs.items() if examples.reference is not None}

    # -- the loop -----------------------------------------------------------------------------------
    def total_steps(self) -> int | None:
        t = self.config.train
        if t.epochs is not None:
            return math.ceil(t.epochs * self.train_data.items_per_epoch / t.batch_size)
        return t.max_steps

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def accumulate_gradients(self) -> tuple[dict[str, tuple[float, float]], int]:
        """Forward and backward over this step's micro-batches, leaving in `.grad` the gradient of the mean loss
        over the whole step's batch (all micro-batches of all ranks, weighted by what each loss averages: tokens,
        pairs); returns the step's metrics as (sum, count) over all ranks, and the tokens read."""
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        tokens = 0
        for i in range(self.micro_batches):
            batch = {k: v.to(self.device, non_blocking=True)
                     for k, v in self.train_data.next_batch(self.micro_size).items()}
            tokens += batch["input_ids"].numel()
            with self.distributed.no_sync(self.train_model, last=i == self.micro_batches - 1):
                with self.autocast():
                    loss, metrics = self.objective.loss(self.train_model, batch)
                # the sum, not the mean: micro-batches (and ranks) that count more tokens weigh more
                weighted = loss * metrics["loss"][1]
                self.scaler.scale(weighted).backward()
            metrics["loss"] = (weighted, metrics["loss"][1])
            for name, (total, count) in metrics.items():
                sums[name] = sums.get(name, 0) + total.detach()
                counts[name] = counts.get(name, 0) + count
        names = list(sums)
        reduced = self.distributed.sum(torch.stack([torch.as_tensor(v, device=self.device, dtype=torch.float32)
                                                    for name in names for v in (sums[name], counts[name])]))
        values = reduced.tolist()  # the step's one read-back from the device
        step = {name: (values[2 * i], values[2 * i + 1]) for i, name in enumerate(names)}
        # ranks' gradients arrive averaged (DDP, FSDP): world_size / count turns their sum into the step's mean
        scale = self.distributed.world_size / max(step["loss"][1], 1)
        torch._foreach_mul_([p.grad for p in self.model.parameters() if p.grad is not None], scale)  # one fused op
        return step, tokens * self.distributed.world_size

    def train_step(self) -> tuple[dict, int]:
        """One optimizer step over the step's batch; returns its metrics and the tokens read (all ranks)."""
        step, tokens = self.accumulate_gradients()
        total, count = step.pop("loss")
        loss_value = total / max(count, 1)
        if not math.isfinite(loss_value):
            raise TrainingStopped(f"loss became {loss_value} at step {self.global_step + 1}; the last good "
                                  f"checkpoint is kept in {self.run_dir / 'checkpoints'}. Try a lower "
                                  "--train.lr or --train.grad_clip 1.0")
        for optimizer in self.optimizers:
            self.scaler.unscale_(optimizer)
        # clipping to infinity measures the norm without changing the gradients
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip or math.inf)
        for optimizer in self.optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        full = getattr(grad_norm, "full_tensor", None)  # FSDP: a DTensor
        result = {"train/loss": loss_value, "train/grad_norm": full() if full else grad_norm}
        for name, (total, count) in step.items():
            if count:  # e.g. sdd's ignore_acc on a step without padding: nothing to report
                result[name if "/" in name else f"train/{name}"] = total / count
        return result, tokens

    def evaluate(self) -> dict[str, float]:
        t = self.config.train
        micro = t.micro_batch_size or t.batch_size
        if self.sdd:  # a denoising loss, not a likelihood bound: no perplexity
            result = evaluate_sdd(self.model, self.val_tokens, self.config.model.block_size, self.tokenizer.eos_id,
                                  batch_size=micro, max_windows=t.eval_batches * micro, device=self.device,
                                  autocast=self.autocast)
            return {f"val/{k}": v for k, v in result.items() if k != "tokens"}
        if self.diffusion:
            result = evaluate_nelbo(self.model, self.val_tokens, self.config.model.block_size, batch_size=micro,
                                    max_windows=t.eval_batches * micro, device=self.device, autocast=self.autocast,
                                    eps=self.config.objective.eps)
            result.pop("tokens")
        elif self.task == "text":
            result = evaluate_tokens(self.model, self.val_tokens, self.config.model.block_size, batch_size=micro,
                                     max_windows=t.eval_batches * micro, kinds=self.val_kinds,
                                     kind_names=self.meta.get("kinds"), eos_id=self.tokenizer.eos_id,
                                     device=self.device, autocast=self.autocast)
            result.pop("tokens")
        else:
            batches = in_order(self.val_examples, micro, self.tokenizer.eos_id, limit=t.eval_batches * micro)
            result = evaluate_objective(self.objective, self.model, batches, self.device, self.autocast)
        metrics = {f"val/{k}": v for k, v in result.items()}
        if self.monitor_examples is not None:
            metrics.update(self.monitor())
        return metrics

    def monitor(self) -> dict[str, float]:
        """Mean per-token log-probabilities of held-out chosen and rejected responses (the SFT monitor)."""
        chosen_sum = rejected_sum = 0.0
        with torch.no_grad():
            self.model.eval()
            for batch in in_order(self.monitor_examples, 16, self.tokenizer.eos_id, limit=MONITOR_PAIRS):
                batch = {k: v.to(self.device) for k, v in batch.items()}
                with self.autocast():
                    chosen, rejected = sequence_log_probs(self.model, batch, length_normalize=True)
                chosen_sum += float(chosen.sum())
                rejected_sum += float(rejected.sum())
            self.model.train()
        n = min(MONITOR_PAIRS, len(self.monitor_examples))
        return {"monitor/logps/chosen": chosen_sum / n, "monitor/logps/rejected": rejected_sum / n}

    def fit(self) -> TrainResult:
        tracker = (Tracker(self.run_dir, self.config, resume_step=self.global_step if self.global_step else None)
                   if self.distributed.is_main else QuietTracker())
        progress = self._progress_bar(self.total_steps())
        self.model.train()
        start_step = self.global_step
        try:
            with StopFlag() as stop:
                stop_reason, val_metrics = self._loop(tracker, progress, stop)
            if stop_reason == "interrupted":
                # best.pt and the patience count stay as an uninterrupted run would have them
                self.save("last")
            if not val_metrics:
                val_metrics = self.evaluate()
                if stop_reason != "interrupted" and self.global_step > start_step:
                    tracker.log(self.global_step, val_metrics)  # the run ends between scheduled evaluations
                    self._after_eval(val_metrics)
        finally:
            progress.close()
            tracker.close()
        return TrainResult(self.run_dir, self.global_step, self.best_metric, val_metrics, stop_reason)

    def _loop(self, tracker: Tracker | QuietTracker, progress, stop: StopFlag) -> tuple[str, dict]:
        """Train until a limit; returns why it stopped and the evaluation of the final step, if it had one."""
        t = self.config.train
        total = self.total_steps()
        warmup = warmup_steps(t, total)
        budget = t.max_minutes * 60 if t.max_minutes is not None else None
        val_metrics, evaluated_step = {}, None
        session_start, elapsed_before = time.perf_counter(), self.elapsed
        window_start, tokens_in_window = session_start, 0
        while True:
            # every rank must stop at the same step: a time budget or Ctrl-C seen by one is agreed by all
            out_of_time, interrupted = self.distributed.agree(
                [budget is not None and self.elapsed >= budget, stop.requested], self.device)
            reason = ("max_steps" if total is not None and self.global_step >= total else
                      "max_minutes" if out_of_time else "interrupted" if interrupted else None)
            if reason:
                return reason, val_metrics if evaluated_step == self.global_step else {}
            fraction = self.global_step / total if total else self.elapsed / budget
            factor = lr_factor(self.global_step, warmup, fraction, t.schedule, t.min_lr_ratio)
            set_lr(self.optimizers, factor)
            if hasattr(self.objective, "set_progress"):  # a curriculum (sdd's k)
                self.objective.set_progress(fraction)
            metrics, step_tokens = self.train_step()
            self.global_step += 1
            self.tokens_seen += step_tokens
            tokens_in_window += step_tokens
            self.elapsed = elapsed_before + time.perf_counter() - session_start
            progress.update(1)
            if self.global_step % t.log_every == 0:
                now = time.perf_counter()
                metrics["train/tokens_per_sec"] = tokens_in_window / max(now - window_start, 1e-9)
                metrics["train/lr"] = t.lr * factor
                metrics["train/epoch"] = self.train_data.epochs_done()
                delta_norms = getattr(self.model, "delta_norms", None)  # differential inputs
                if delta_norms is not None:
                    metrics.update(summarize("diag/delta_norm", delta_norms))
                    tracker.log_histogram(self.global_step, "diag/delta_norm", delta_norms)
                tracker.log(self.global_step, metrics)
                progress.set_postfix(loss=f"{metrics['train/loss']:.3f}",
                                     tok_s=f"{metrics['train/tokens_per_sec']:.0f}", refresh=False)
                window_start, tokens_in_window = now, 0
            if self.global_step % t.eval_every == 0 or (total is not None and self.global_step >= total):
                val_metrics, evaluated_step = self.evaluate(), self.global_step
                tracker.log(self.global_step, val_metrics)
                self._report(progress, val_metrics)
                if self._after_eval(val_metrics):
                    return "early_stopping", val_metrics
                window_start, tokens_in_window = time.perf_counter(), 0
            elif t.checkpoint_every and self.global_step % t.checkpoint_every == 0:
                self.save("last")

    def _after_eval(self, val_metrics: dict) -> bool:
        """Save checkpoints, track the best value; True when early stopping says stop."""
        t = self.config.train
        name = t.early_stop_metric
        value, loss = val_metrics[name], val_metrics["val/loss"]
        improved = metric_improved(value, self.best_metric, name)
        # a saturated metric (preference accuracy at 1.0) ties: the lower validation loss then makes best.pt
        tie_won = value == self.best_metric and self.best_loss is not None and loss < self.best_loss
        self.evals_without_improvement = 0 if improved else self.evals_without_improvement + 1
        if improved or tie_won:
            self.best_metric, self.best_loss = value, loss
        self.save(*(["best"] if improved or tie_won else []), "last")
        return 0 < t.early_stop_patience <= self.evals_without_improvement

    def _progress_bar(self, total: int | None):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=self.global_step, unit="step", dynamic_ncols=True,
                    disable=not (self.config.log.progress and sys.stderr.isatty() and self.distributed.is_main),
                    desc=self.run_dir.name)

    def _report(self, progress, val_metrics: dict) -> None:
        shown = ", ".join(f"{name[4:]} {val_metrics[name]:.4f}" for name in ("val/loss", "val/accuracy",
                                                                             "val/masked_accuracy",
                                                                             "val/rewards/accuracies")
                          if name in val_metrics)
        line = f"step {self.global_step}: {shown}"
        if not progress.disable:
            progress.write(line)
        elif self.config.log.progress:
            self.log(line)
