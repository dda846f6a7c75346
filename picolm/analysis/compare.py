"""`picolm compare`: several runs side by side, one markdown table of final metrics and one plot of loss curves."""

from __future__ import annotations

from pathlib import Path

from picolm.analysis.curves import loss_figure, read_histories, save_figure
from picolm.errors import PicolmError

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
    columns = [c for c in ("settings", "steps", "train/loss", *SHOWN, "best val/loss")
               if any(c in s for s in summaries.values())]
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(_cell(s.get(c)) for c in columns) + " |" for name, s in summaries.items()]
    if notes:
        lines += [""] + [f"{name}: {note}" for name, note in notes.items()]
    return "\n".join(lines)


def saved_config(run: Path):
    """The run's config.yaml; None where it has none (or an unreadable one): its metrics are compared all the same."""
    from picolm.config import load_config

    try:
        return load_config(run / "config.yaml")
    except (OSError, PicolmError):
        return None


def family_note(config) -> str | None:
    """The note of the family the run trained, if it has one."""
    from picolm.methods import FAMILIES, family_of

    return FAMILIES.get(config.objective.kind, family_of(config.model)).note


def differing_settings(configs: dict[str, object]) -> dict[str, str]:
    """Per run, the settings its config.yaml holds (as trained, after every override) with values that differ between
    the runs, as `model.attention=linear, ...`; the log section names the run, it changes nothing learned."""
    flat = {name: {f"{section}.{key}": value for section, values in config.to_dict().items() if section != "log"
                   for key, value in values.items()} for name, config in configs.items()}
    if len(flat) < 2:
        return {}
    keys = [key for key in next(iter(flat.values())) if len({repr(f.get(key)) for f in flat.values()}) > 1]
    return {name: ", ".join(f"{key}={f[key]}" for key in keys) for name, f in flat.items()} if keys else {}


def compare_runs(run_dirs: list[str | Path], out: str | Path) -> tuple[str, Path]:
    """Write OUT/compare.md (the table and the plot) and OUT/compare.png; returns the table and the report."""
    histories = read_histories(run_dirs)
    out = Path(out)
    configs = {name: config for name, run in zip(histories, map(Path, run_dirs)) if (config := saved_config(run))}
    notes = {name: note for name, config in configs.items() if (note := family_note(config))}
    summaries = {name: final_metrics(rows) for name, rows in histories.items()}
    for name, settings in differing_settings(configs).items():
        summaries[name]["settings"] = settings
    table = markdown_table(summaries, notes)
    plot = save_figure(loss_figure(histories, "runs compared"), out / "compare.png")
    report = out / "compare.md"
    report.write_text(f"# Runs compared\n\n{table}\n\n![loss curves]({plot.name})\n", encoding="utf-8")
    return table, report
