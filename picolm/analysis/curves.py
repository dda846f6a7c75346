"""Training curves from runs' metrics: the loss of one run or several overlaid, and the post-training panels (the SFT
monitor, DPO's implicit rewards) of whichever runs logged them. Figures for TensorBoard, PNG files for the rest."""

from __future__ import annotations

from pathlib import Path

from picolm.errors import PicolmError
from picolm.train.tracking import read_metrics

# which panel a run feeds is decided by what it logged, never by asking which family trained it
SFT_MONITOR = ("monitor/logps/chosen", "monitor/logps/rejected")
DPO_REWARDS = ("rewards/chosen", "rewards/rejected", "val/rewards/chosen", "val/rewards/rejected")


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Save and close; figures made with a layout engine (constrained: shared colour bars) keep theirs."""
    import matplotlib.pyplot as plt

    if fig.get_layout_engine() is None:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def read_histories(run_dirs: list[str | Path]) -> dict[str, list[dict]]:
    """Each run's metrics.jsonl rows under its folder's name (its path where two share a name)."""
    histories = {}
    for run in map(Path, run_dirs):
        rows = read_metrics(run)
        if not rows:
            raise PicolmError("no metrics.jsonl here: not a run directory, or a run that logged nothing", path=run)
        histories[run.name if run.name not in histories else str(run)] = rows
    return histories


def _points(rows: list[dict], name: str) -> list[tuple[int, float]]:
    return [(r["step"], r[name]) for r in rows if name in r]


def _logged(rows: list[dict], names: tuple[str, ...]) -> bool:
    return any(name in r for r in rows for name in names)


LOG_SCALE_SPAN = 8  # a loss axis spanning more than this ratio is drawn on a log scale


def loss_figure(histories: dict[str, list[dict]], title: str = "loss"):
    """Training loss (thin) and validation loss (markers) of every run against step, one colour per run."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.6), dpi=120, layout="tight")
    alone = len(histories) == 1
    for i, (name, rows) in enumerate(histories.items()):
        train, val = _points(rows, "train/loss"), _points(rows, "val/loss")
        if train:
            ax.plot(*zip(*train), color=f"C{i % 10}", linewidth=0.8, alpha=0.6 if alone else 0.35,
                    label="train" if alone else None)
        if val:
            ax.plot(*zip(*val), "o-", color=f"C{i % 10}", linewidth=1.6, markersize=3,
                    label="validation" if alone else name)
    losses = [value for rows in histories.values() for name in ("train/loss", "val/loss")
              for _, value in _points(rows, name)]
    if losses and min(losses) > 0 and max(losses) / min(losses) > LOG_SCALE_SPAN:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_yscale("log")  # the first steps' loss would flatten the gaps late in training
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.6, not 6 x 10^-1
        ax.yaxis.set_major_formatter(plain)  # between the decades too while they are few enough to read
        ax.yaxis.set_minor_formatter(plain if max(losses) / min(losses) < 100 else NullFormatter())
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (validation: markers; training: thin)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def post_training_figure(histories: dict[str, list[dict]]):
    """A panel of the SFT monitor (mean log-probability of held-out chosen vs rejected responses) for the runs that
    logged `monitor/logps/*`, and one of DPO's implicit rewards of chosen vs rejected responses, on training batches
    and on validation, for the runs that logged `rewards/*`; None when no run logged either."""
    colours = {name: f"C{i % 10}" for i, name in enumerate(histories)}
    monitored = {name: rows for name, rows in histories.items() if _logged(rows, SFT_MONITOR)}
    rewarded = {name: rows for name, rows in histories.items() if _logged(rows, DPO_REWARDS)}
    panels = [kind for kind, runs in (("sft", monitored), ("dpo", rewarded)) if runs]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 1, 4.6), dpi=120, layout="tight",
                             squeeze=False)
    axes = dict(zip(panels, axes[0]))
    for name, rows in monitored.items():
        for metric, response, style in (("monitor/logps/chosen", "chosen", "o-"),
                                         ("monitor/logps/rejected", "rejected", "s--")):
            if points := _points(rows, metric):
                axes["sft"].plot(*zip(*points), style, color=colours[name], markersize=3, label=f"{name}: {response}")
    for name, rows in rewarded.items():
        for metric, what, style, width in (("rewards/chosen", "chosen, train", "-", 0.9),
                                           ("rewards/rejected", "rejected, train", "--", 0.9),
                                           ("val/rewards/chosen", "chosen, validation", "o-", 1.6),
                                           ("val/rewards/rejected", "rejected, validation", "s--", 1.6)):
            if points := _points(rows, metric):
                axes["dpo"].plot(*zip(*points), style, color=colours[name], markersize=3, linewidth=width,
                                 alpha=0.5 if width < 1 else 1.0, label=f"{name}: {what}")
    if "sft" in axes:
        axes["sft"].set_title("SFT monitor: held-out preference pairs")
        axes["sft"].set_ylabel("mean log-probability per response token")
    if "dpo" in axes:
        axes["dpo"].set_title("DPO: implicit rewards  beta * log(pi / pi_ref)")
        axes["dpo"].set_ylabel("reward")
    for ax in axes.values():
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def run_figures(histories: dict[str, list[dict]], title: str) -> dict[str, object]:
    """Every figure the runs' metrics give, by name: `loss`, and `post_training` where a run logged its metrics."""
    post_training = post_training_figure(histories)
    return {"loss": loss_figure(histories, title), **({"post_training": post_training} if post_training else {})}


def write_plots(run_dirs: list[str | Path], out: str | Path) -> list[Path]:
    """`picolm plot`: OUT/loss.png for all the runs, OUT/post_training.png where some logged SFT or DPO metrics."""
    histories = read_histories(run_dirs)
    title = "loss" if len(histories) > 1 else f"{next(iter(histories))}: loss"
    return [save_figure(figure, Path(out) / f"{name}.png") for name, figure in run_figures(histories, title).items()]


def plot_post_training(histories: dict[str, list[dict]], path: str | Path) -> Path | None:
    """The post-training panels of the runs (by name) that logged the SFT monitor or DPO rewards; None when none did."""
    figure = post_training_figure(histories)
    return save_figure(figure, path) if figure else None
