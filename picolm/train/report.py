"""What a finished run leaves behind besides checkpoints and metrics: plots, samples and a summary."""

from __future__ import annotations

from picolm.analysis.curves import plot_loss
from picolm.eval.samples import write_samples
from picolm.train.tracking import read_metrics


def finish_run(trainer, result) -> None:
    """Plots and samples for a finished run, then a short summary."""
    run_dir = result.run_dir
    plot_loss(read_metrics(run_dir), run_dir / "plots" / "loss.png", title=f"{run_dir.name}: loss")
    t = trainer.config.train
    samples = write_samples(trainer.model, trainer.tokenizer, trainer.val_tokens, run_dir / "samples.txt",
                            count=t.num_samples, max_new_tokens=t.sample_tokens, device=trainer.device)
    metrics = result.final_metrics
    print(f"\nstopped ({result.stop_reason}) at step {result.global_step}: val loss {metrics['val/loss']:.4f}, "
          f"perplexity {metrics['val/perplexity']:.2f}, accuracy {metrics['val/accuracy']:.3f}")
    if samples:
        print("\n" + samples[0])
    print(f"run directory: {run_dir}")
