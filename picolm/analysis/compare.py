"""`picolm compare`: several runs side by side, one markdown table of final metrics and one plot of loss curves."""

from __future__ import annotations

from pathlib import Path

from picolm.analysis.curves import pyplot, save_figure
from picolm.errors import PicolmError
from picolm.train.tracking import read_metrics

SHOWN = ("val/loss", "val/perplexity", "val/perplexity_bound", "val/accuracy", "val/masked_accuracy", "val/ignore_acc",
         "val/rewards/accuracies", "val/rewards/margins")


def final_metrics(rows: list[dict]) -> dict:
    """Steps, the last training loss, and the last and best value of each validation metric a run logged."""
    summary = {"steps": max((r["step"] for r in rows), default=0)}
    train = [r["train/loss"] for r in rows if "train/loss" in r]
    if train:
        summary["train/loss"] = train[-1]
    for name in SHOWN:
        values = [r[name] for r in rows if name in r]
        if values:
            summary[name] = values[-1]
    losses = [r["val/loss"] for r in rows if "val/loss" in r]
    if losses:
        summary["best val/loss"] = min(losses)
    return summary


def _cell(value) -> str:
    return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_table(summaries: dict[str, dict], notes: dict[str, str] | None = None) -> str:
    """The table, then what each run's loss and perplexity are where its family says they are not the usual."""
    columns = [c for c in ("steps", "train/loss", *SHOWN, "best val/loss") if any(c in s for s in summaries.values())]
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(_cell(s.get(c)) for c in columns) + " |" for name, s in summaries.items()]
    if notes:
        lines += [""] + [f"{name}: {note}" for name, note in notes.items()]
    return "\n".join(lines)


def family_note(run: Path) -> str | None:
    """The note of the family the run trained (from its config.yaml), if it has one."""
    from picolm.config import load_config
    from picolm.methods import FAMILIES, family_of

    try:
        config = load_config(run / "config.yaml")
    except (OSError, PicolmError):  # no config (or an unreadable one): the metrics are compared all the same
        return None
    return FAMILIES.get(config.objective.kind, family_of(config.model)).note


def plot_runs(histories: dict[str, list[dict]], path: Path, title: str = "runs compared") -> Path:
    """Validation loss (and the training loss, thin) of every run against step."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 4.6), dpi=120)
    for i, (name, rows) in enumerate(histories.items()):
        color = f"C{i % 10}"
        train = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
        val = [(r["step"], r["val/loss"]) for r in rows if "val/loss" in r]
        if train:
            ax.plot(*zip(*train), color=color, linewidth=0.8, alpha=0.35)
        if val:
            ax.plot(*zip(*val), "o-", color=color, linewidth=1.6, markersize=3, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (validation: markers; training: thin)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def compare_runs(run_dirs: list[str | Path], out: str | Path) -> tuple[str, Path]:
    """Write OUT/compare.md (the table and the plot) and OUT/compare.png; returns the table and the report."""
    histories = {}
    for run in map(Path, run_dirs):
        rows = read_metrics(run)
        if not rows:
            raise PicolmError("no metrics.jsonl here: not a run directory, or a run that logged nothing", path=run)
        name = run.name if run.name not in histories else str(run)
        histories[name] = rows
    out = Path(out)
    notes = {name: note for name, run in zip(histories, map(Path, run_dirs)) if (note := family_note(run))}
    table = markdown_table({name: final_metrics(rows) for name, rows in histories.items()}, notes)
    plot = plot_runs(histories, out / "compare.png")
    report = out / "compare.md"
    report.write_text(f"# Runs compared\n\n{table}\n\n![loss curves]({plot.name})\n", encoding="utf-8")
    return table, report
