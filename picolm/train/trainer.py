"""The one training loop: accumulation, precision, clipping, schedule, eval, checkpoint, resume."""

from __future__ import annotations

import math
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from picolm.config import Config, save_config
from picolm.data.loader import TokenWindows, check_split
from picolm.data.pack import load_meta
from picolm.errors import PicolmError, TrainingStopped
from picolm.eval.lm import evaluate_tokens, evaluation_metric_names, load_split
from picolm.models.loading import build_model, describe_mismatch
from picolm.tokenizer import load_tokenizer
from picolm.train.checkpoint import load_checkpoint, save_checkpoint
from picolm.train.objectives import NextToken
from picolm.train.optim import build_optimizers, load_optimizer_state, lr_factor, set_lr, warmup_steps
from picolm.train.tracking import Tracker


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
    return value < best if metric.endswith(("loss", "perplexity")) else value > best


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
        self.config, self.run_dir, self.log = config, Path(run_dir), log
        self.objective = objective or NextToken()
        self.meta = load_meta(config.data.path)
        self.data_dir = Path(config.data.path)
        self.tokenizer = load_tokenizer(self.data_dir / "tokenizer")
        self._check_vocabulary()
        self.device = resolve_device(config.train.device)
        self.autocast_dtype = resolve_precision(config.train.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        torch.manual_seed(config.train.seed)
        self.model = build_model(config.model).to(self.device)
        self.model.grad_checkpointing = config.train.grad_checkpointing
        self.optimizers = build_optimizers(self.model, config.train, self.device.type)
        self.train_data = TokenWindows(self.data_dir / "train.bin", config.model.block_size, seed=config.train.seed)
        self.val_tokens, self.val_kinds = load_split(self.data_dir, "val")
        check_split(self.val_tokens, self.data_dir / "val.bin", config.model.vocab_size, config.model.block_size)
        self._check_objective_settings()
        self.global_step, self.tokens_seen, self.elapsed = 0, 0, 0.0
        self.best_metric, self.evals_without_improvement = None, 0
        self._prepare_run_dir(resume)
        if config.train.compile:
            for block in self.model.blocks:
                block.compile()

    # -- set-up -------------------------------------------------------------------------------------
    def _check_vocabulary(self) -> None:
        model, vocab = self.config.model, self.tokenizer.vocab_size
        if model.vocab_size == 0:
            model.vocab_size = vocab
        elif model.vocab_size < vocab:
            raise PicolmError(f"{model.vocab_size} is smaller than the tokenizer's {vocab}: token ids would fall "
                              "outside the embedding table", field="model.vocab_size")

    def _check_objective_settings(self) -> None:
        if getattr(self.objective, "needs_causal", False) and not self.config.model.causal:
            raise PicolmError("next-token training needs a causal model: with causal false it would see its "
                              "targets", field="model.causal")
        known = ["val/" + name for name in evaluation_metric_names(self.meta.get("kinds"))]
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
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.run_dir / "config.yaml")
        shutil.copytree(self.data_dir / "tokenizer", self.run_dir / "tokenizer", dirs_exist_ok=True)

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
        self.model.load_state_dict(state["model_state_dict"])
        for optimizer, saved in zip(self.optimizers, state["optimizer_state_dict"], strict=True):
            load_optimizer_state(optimizer, saved)
        if state.get("scaler_state_dict"):
            self.scaler.load_state_dict(state["scaler_state_dict"])
        self.global_step, self.tokens_seen = state["global_step"], state["tokens_seen"]
        if state["best_metric"] == self.config.train.early_stop_metric:
            self.best_metric = state["best_val_loss"]
            self.evals_without_improvement = state["evals_without_improvement"]
        self.elapsed = state["elapsed_seconds"]
        self.train_data.load_state_dict(state["data_state"])
        torch.set_rng_state(state["rng_state"]["torch"].cpu())
        if self.device.type == "cuda" and state["rng_state"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng_state"]["cuda"].cpu())
        self.log(f"resumed {self.run_dir} at step {self.global_step}")

    def checkpoint_state(self) -> dict:
        return {
            "architecture": self.config.model.arch,
            "model_config": self.config.to_dict()["model"],
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": [o.state_dict() for o in self.optimizers],
            "scaler_state_dict": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "train_config": self.config.to_dict(),
            "global_step": self.global_step,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_metric,
            "best_metric": self.config.train.early_stop_metric,
            "evals_without_improvement": self.evals_without_improvement,
            "elapsed_seconds": self.elapsed,
            "rng_state": {"torch": torch.get_rng_state(),
                          "cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None},
            "data_state": self.train_data.state_dict(),
            "tokenizer": self.tokenizer.to_dict(),
        }

    # -- the loop -----------------------------------------------------------------------------------
    def total_steps(self) -> int | None:
        t = self.config.train
        if t.epochs is not None:
            return math.ceil(t.epochs * self.train_data.windows_per_epoch / t.batch_size)
        return t.max_steps

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, micro_batches: int, micro_size: int) -> dict:
        """One optimizer step over `micro_batches` forward/backward passes. Only the loss is read back each
        step (for the NaN check); accuracy and gradient norm stay tensors until they are logged."""
        loss_sum = torch.zeros((), device=self.device)
        correct = counted = 0
        for _ in range(micro_batches):
            x, y = self.train_data.next_batch(micro_size)
            batch = {"input_ids": x.to(self.device, non_blocking=True), "targets": y.to(self.device, non_blocking=True)}
            with self.autocast():
                loss, metrics = self.objective.loss(self.model, batch)
            self.scaler.scale(loss / micro_batches).backward()
            loss_sum += loss.detach()
            correct += metrics["correct"]
            counted += metrics["counted"]
        loss_value = loss_sum.item() / micro_batches
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
        return {"train/loss": loss_value, "train/accuracy": correct / counted.clamp(min=1),
                "train/grad_norm": grad_norm}

    def evaluate(self) -> dict[str, float]:
        t = self.config.train
        micro = t.micro_batch_size or t.batch_size
        result = evaluate_tokens(self.model, self.val_tokens, self.config.model.block_size, batch_size=micro,
                                 max_windows=t.eval_batches * micro, kinds=self.val_kinds,
                                 kind_names=self.meta.get("kinds"), eos_id=self.tokenizer.eos_id,
                                 device=self.device, autocast=self.autocast)
        result.pop("tokens")
        return {f"val/{k}": v for k, v in result.items()}

    def fit(self) -> TrainResult:
        tracker = Tracker(self.run_dir, self.config, resume_step=self.global_step if self.global_step else None)
        progress = self._progress_bar(self.total_steps())
        self.model.train()
        start_step = self.global_step
        try:
            with StopFlag() as stop:
                stop_reason, val_metrics = self._loop(tracker, progress, stop)
            if stop_reason == "interrupted":
                # best.pt and the patience count stay as an uninterrupted run would have them
                save_checkpoint(self.checkpoint_state(), self.run_dir / "checkpoints" / "last.pt")
            if not val_metrics:
                val_metrics = self.evaluate()
                if stop_reason != "interrupted" and self.global_step > start_step:
                    tracker.log(self.global_step, val_metrics)  # the run ends between scheduled evaluations
                    self._after_eval(val_metrics)
        finally:
            progress.close()
            tracker.close()
        return TrainResult(self.run_dir, self.global_step, self.best_metric, val_metrics, stop_reason)

    def _loop(self, tracker: Tracker, progress, stop: StopFlag) -> tuple[str, dict]:
        """Train until a limit; returns why it stopped and the evaluation of the final step, if it had one."""
        t = self.config.train
        micro = t.micro_batch_size or t.batch_size
        total = self.total_steps()
        warmup = warmup_steps(t, total)
        budget = t.max_minutes * 60 if t.max_minutes is not None else None
        step_tokens = t.batch_size * self.config.model.block_size
        val_metrics, evaluated_step = {}, None
        session_start, elapsed_before = time.perf_counter(), self.elapsed
        window_start, tokens_in_window = session_start, 0
        while True:
            reason = ("max_steps" if total is not None and self.global_step >= total else
                      "max_minutes" if budget is not None and self.elapsed >= budget else
                      "interrupted" if stop.requested else None)
            if reason:
                return reason, val_metrics if evaluated_step == self.global_step else {}
            fraction = self.global_step / total if total else self.elapsed / budget
            factor = lr_factor(self.global_step, warmup, fraction, t.schedule, t.min_lr_ratio)
            set_lr(self.optimizers, factor)
            metrics = self.train_step(t.batch_size // micro, micro)
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
                save_checkpoint(self.checkpoint_state(), self.run_dir / "checkpoints" / "last.pt")

    def _after_eval(self, val_metrics: dict) -> bool:
        """Save checkpoints, track the best value; True when early stopping says stop."""
        t = self.config.train
        name = t.early_stop_metric
        value = val_metrics[name]
        if metric_improved(value, self.best_metric, name):
            self.best_metric, self.evals_without_improvement = value, 0
            save_checkpoint(self.checkpoint_state(), self.run_dir / "checkpoints" / "best.pt")
        else:
            self.evals_without_improvement += 1
        save_checkpoint(self.checkpoint_state(), self.run_dir / "checkpoints" / "last.pt")
        return 0 < t.early_stop_patience <= self.evals_without_improvement

    def _progress_bar(self, total: int | None):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=self.global_step, unit="step", dynamic_ncols=True,
                    disable=not (self.config.log.progress and sys.stderr.isatty()), desc=self.run_dir.name)

    def _report(self, progress, val_metrics: dict) -> None:
        shown = ", ".join(f"{name[4:]} {val_metrics[name]:.4f}" for name in ("val/loss", "val/accuracy")
                          if name in val_metrics)
        line = f"step {self.global_step}: {shown}"
        if not progress.disable:
            progress.write(line)
        elif self.config.log.progress:
            self.log(line)
