"""The one training loop: accumulation, precision, clipping, schedule, eval, checkpoint, resume, DDP/FSDP. What is
learned is the family's business (the objective and its evaluation); set-up is picolm/train/setup.py."""

from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from picolm.checkpoint import link_checkpoint, save_checkpoint
from picolm.config import Config, save_config
from picolm.errors import PicolmError, TrainingStopped, first_line
from picolm.loading import describe_mismatch
from picolm.locks import lock_folder
from picolm.runtime import autocast, resolve_device, resolve_precision
from picolm.train.distributed import (Distributed, full_model_state, full_optimizer_state, load_full_model_state,
                                      load_full_optimizer_state)
from picolm.train.optim import build_optimizers, lr_factor, set_lr, warmup_steps
from picolm.train.setup import prepare
from picolm.train.tracking import QuietTracker, Tracker, run_name, summarize


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
    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, log=print):
        self.distributed = Distributed(config.train.parallel)
        self.run_dir = Path(run_dir)
        self.lock = None  # the run directory's one writer is rank 0
        if self.distributed.is_main:
            self.lock = lock_folder(self.run_dir, "wait for it to finish" if resume else
                                    "wait for it to finish or choose another --out").acquire()
        try:
            self._set_up(config, resume, log)
        except BaseException:
            self._release(failed=True)
            raise

    def _set_up(self, config: Config, resume: bool, log) -> None:
        self.log = log if self.distributed.is_main else (lambda *args, **kwargs: None)
        self.device = self.distributed.device(resolve_device(config.train.device))
        self.micro_size, self.micro_batches = self._micro_batching(config)
        self.distributed.start(self.device)
        self.autocast_dtype = resolve_precision(config.train.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.run = prepare(config, self.run_dir, resume, self.distributed.rank, self.distributed.world_size, self.log)
        self.config, self.family, self.objective = self.run.config, self.run.family, self.run.objective
        self.task, self.tokenizer, self.train_data = self.run.resolved.task, self.run.tokenizer, self.run.train_data
        self.model = self.run.model.to(self.device).train()
        if self.distributed.rank:  # the same initial weights on every rank, then each its own dropout and noise
            torch.manual_seed(self.config.train.seed + self.distributed.rank)
        self.model.grad_checkpointing = self.config.train.grad_checkpointing
        state = self.run.state
        examples = self.run.examples()
        for split, saved in (state or {}).get("reference_log_probs", {}).items():
            examples[split].reference = saved
        t = self.config.train
        self.objective.prepare(self.model, examples, t.micro_batch_size or t.batch_size, self.tokenizer.eos_id,
                               self.device, self.autocast, self.log)
        self.train_model = self.distributed.wrap(self.model, self.device)  # what the training step calls
        self.optimizers = build_optimizers(self.model, t, self.device.type)
        self.global_step, self.tokens_seen, self.elapsed = 0, 0, 0.0
        self.best_metric, self.best_loss, self.evals_without_improvement = None, None, 0
        if state is not None:
            self._restore(state)
        self._prepare_run_dir(resume)
        if t.compile:
            for block in getattr(self.model, "blocks", None) or [self.model]:
                block.compile()

    # -- set-up -------------------------------------------------------------------------------------
    def _micro_batching(self, config: Config) -> tuple[int, int]:
        """(micro-batch size, micro-batches per step) of each rank: `train.batch_size` is the whole step's batch,
        split evenly over the ranks and then into micro-batches."""
        t, world = config.train, self.distributed.world_size
        if t.batch_size % world:
            raise PicolmError(f"{t.batch_size} does not split evenly over {world} processes", field="train.batch_size")
        per_rank = t.batch_size // world
        micro = min(t.micro_batch_size or per_rank, per_rank)
        if per_rank % micro:
            raise PicolmError(f"must divide the per-process batch of {per_rank} (batch_size {t.batch_size} over "
                              f"{world} processes)", field="train.micro_batch_size")
        return micro, per_rank // micro

    def evaluation_names(self) -> list[str]:
        return self.family.metric_names(self.task, self.run.meta.get("kinds"))

    def _prepare_run_dir(self, resume: bool) -> None:
        if not resume and not self.config.log.run_name:
            source = str(self.run.meta.get("source", Path(self.config.data.path).name))
            name = run_name(self.config, self.family, source, self.run_dir.parent)
            self.config = replace(self.config, log=replace(self.config.log, run_name=name))
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
        try:
            load_full_model_state(self.model, state["model_state_dict"], self.distributed)
            for optimizer, saved in zip(self.optimizers, state["optimizer_state_dict"], strict=True):
                load_full_optimizer_state(self.model, optimizer, saved, self.distributed)
        except (RuntimeError, ValueError, KeyError) as exc:  # a checkpoint whose parts disagree (edited by hand)
            raise PicolmError(f"its weights or optimizer state do not fit its model ({first_line(exc)})",
                              path=self.run_dir / "checkpoints" / "last.pt") from None
        if state.get("scaler_state_dict"):
            self.scaler.load_state_dict(state["scaler_state_dict"])
        self.global_step, self.tokens_seen = state["global_step"], state["tokens_seen"]
        if state["best_metric"] == self.config.train.early_stop_metric:
            self.best_metric, self.best_loss = state["best_val_loss"], state.get("best_loss")
            self.evals_without_improvement = state["evals_without_improvement"]
        self.elapsed = state["elapsed_seconds"]
        self.train_data.load_state_dict(state["data_state"])
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
            "task": self.task,
            "global_step": self.global_step,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_metric,
            "best_metric": self.config.train.early_stop_metric,
            "best_loss": self.best_loss,
            "evals_without_improvement": self.evals_without_improvement,
            "elapsed_seconds": self.elapsed,
            "rng_state": {**rng, "ranks": ranks},
            "data_state": self.train_data.state_dict(),
            "reference_log_probs": {split: examples.reference for split, examples in self.run.examples().items()
                                    if getattr(examples, "reference", None) is not None},
            "tokenizer": self.tokenizer.to_dict(),
            "tokenizer_fingerprint": self.tokenizer.fingerprint,
        }

    def save(self, *names: str) -> None:
        """checkpoints/{name}.pt for each name, with its weights as {name}.safetensors; written by rank 0 alone, once:
        the other names are links to the first."""
        state = self.checkpoint_state()
        if not self.distributed.is_main:
            return
        first, *others = (self.run_dir / "checkpoints" / f"{name}.pt" for name in names)
        save_checkpoint(state, first, weights=first.with_suffix(".safetensors"))
        for path in others:
            link_checkpoint(first, path)

    def close(self, failed: bool = False) -> None:
        """Leave the torchrun process group (nothing to do in one process); the trainer is done with. After a
        failure on this rank there is no waiting for the others: torchrun stops them when this process exits."""
        if self.distributed.active:
            self.train_model = self.model = self.optimizers = None
        self.distributed.close(wait=not failed)
        self._release(failed)

    def _release(self, failed: bool) -> None:
        """Let another process write the run; a run that failed before writing anything leaves no folder."""
        if self.lock is not None:
            self.lock.release(discard_unused=failed)

    def _model_config_for_checkpoint(self) -> dict:
        if self.config.model.arch == "hf":
            from picolm.interop.hf import hf_checkpoint_config

            return hf_checkpoint_config(self.model)
        return self.config.to_dict()["model"]

    # -- the loop -----------------------------------------------------------------------------------
    def total_steps(self) -> int | None:
        t = self.config.train
        if t.epochs is not None:
            return math.ceil(t.epochs * self.train_data.items_per_epoch / t.batch_size)
        return t.max_steps

    def autocast(self):
        return autocast(self.device, self.autocast_dtype)

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
        # a metric with nothing counted this step (sdd's ignore_acc without padding, say) is not reported
        pooled = self.family.finish({"loss": loss_value, **{name: total / count for name, (total, count)
                                                            in step.items() if count}})
        result = {name if "/" in name else f"train/{name}": value for name, value in pooled.items()}
        return {**result, "train/grad_norm": full() if full else grad_norm}, tokens

    def evaluate(self) -> dict[str, float]:
        """The family's validation metrics (`val/` names) and its probes (their own names)."""
        t = self.config.train
        micro = t.micro_batch_size or t.batch_size
        batches = self.run.val_batches(micro, t.eval_batches * micro)
        result = self.family.evaluate(self.model, batches, self.objective, self.device, self.autocast,
                                      self.run.meta.get("kinds"))
        metrics = {f"val/{name}": value for name, value in result.items()}
        return {**metrics, **self.family.probe(self.model, self.objective, self.device, self.autocast)}

    def fit(self) -> TrainResult:
        # kept for the figures drawn from the finished run (picolm/analysis/report.py)
        self.tracker = tracker = (Tracker(self.run_dir, self.config, resume_step=self.global_step or None)
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
                                                                             "val/rewards/accuracies")
                          if name in val_metrics)
        line = f"step {self.global_step}: {shown}"
        if not progress.disable:
            progress.write(line)
        elif self.config.log.progress:
            self.log(line)
