"""What a finished run leaves behind besides checkpoints and metrics: plots, samples and a summary."""

from __future__ import annotations

import time
from pathlib import Path

from picolm.analysis.curves import run_figures, save_figure
from picolm.eval.samples import document_openings, write_samples
from picolm.train.tracking import read_metrics


def sample_prompts(trainer, count: int) -> list[list[int]]:
    """Held-out document openings for a language model; held-out prompts for SFT and DPO."""
    run = trainer.run
    if run.val_examples is None:
        return document_openings(run.val_tokens, trainer.tokenizer.eos_id, count, prompt_tokens=4)
    return [p.tolist() for p in run.val_examples.prompts[:count]]


def finish_run(trainer, result) -> None:
    """Plots (plots/*.png, and TensorBoard's `figures/*` where it logs) and samples for a finished run, then a short
    summary (by rank 0 alone under torchrun)."""
    if not trainer.distributed.is_main:
        return
    run_dir = result.run_dir
    figures = run_figures({run_dir.name: read_metrics(run_dir)}, title=f"{run_dir.name}: loss")
    trainer.tracker.add_figures(figures, result.global_step)
    for name, figure in figures.items():
        save_figure(figure, run_dir / "plots" / f"{name}.png")
    t = trainer.config.train
    if trainer.distributed.sharded:  # rank 0 holds a shard of each weight: sample from the checkpoint instead
        samples = []
        print(f"samples: picolm generate {run_dir} (a sharded run writes no samples.txt)")
    else:
        samples = write_samples(trainer.model, trainer.tokenizer, sample_prompts(trainer, t.num_samples),
                                run_dir / "samples.txt", max_new_tokens=t.sample_tokens, device=trainer.device)
    metrics = result.final_metrics
    shown = ", ".join(f"{name} {metrics['val/' + name]:.4f}" for name in trainer.evaluation_names()[:3])
    print(f"\nstopped ({result.stop_reason}) at step {result.global_step}: val {shown}")
    if samples:
        print("\n" + samples[0])
    print(f"run directory: {run_dir}")


def train_stage(stage: str, config, run_dir: Path) -> Path:
    """Train one run of a pipeline (resuming it if an earlier attempt was interrupted), with its plots and samples."""
    from picolm.train.trainer import Trainer

    started = time.perf_counter()
    trainer = Trainer(config, run_dir, resume=(Path(run_dir) / "checkpoints" / "last.pt").exists())
    print(f"\n== {stage}: {trainer.model.num_params() / 1e6:.2f}M parameters on {trainer.device}, run {run_dir}")
    try:
        result = trainer.fit()
        if result.stop_reason == "interrupted":
            raise KeyboardInterrupt
        finish_run(trainer, result)
    except BaseException:
        trainer.close(failed=True)
        raise
    trainer.close()
    print(f"{stage} took {time.perf_counter() - started:.0f} s")
    return Path(run_dir)
