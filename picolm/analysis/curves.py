"""Training curves as PNG files."""

from __future__ import annotations

from pathlib import Path


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


def plot_loss(rows: list[dict], path: str | Path, title: str = "loss") -> Path | None:
    """Train and validation loss against step; None when there is nothing to plot."""
    train = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    val = [(r["step"], r["val/loss"]) for r in rows if "val/loss" in r]
    if not train and not val:
        return None
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1.2, alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", linewidth=1.6, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_post_training(sft_rows: list[dict], dpo_rows: list[dict], path: str | Path) -> Path:
    """Left: the SFT monitor (mean log-probability of held-out chosen vs rejected responses); right: DPO's
    implicit rewards of chosen vs rejected responses, on training batches and on validation."""
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    for name, label in (("monitor/logps/chosen", "chosen (horror)"), ("monitor/logps/rejected", "rejected (wholesome)")):
        points = [(r["step"], r[name]) for r in sft_rows if name in r]
        if points:
            left.plot(*zip(*points), "o-", label=label, markersize=3)
    left.set_title("SFT: held-out responses")
    left.set_ylabel("mean log-probability per token")
    for name, label, style in (("rewards/chosen", "chosen, train", "-"), ("rewards/rejected", "rejected, train", "-"),
                               ("val/rewards/chosen", "chosen, validation", "o--"),
                               ("val/rewards/rejected", "rejected, validation", "o--")):
        points = [(r["step"], r[name]) for r in dpo_rows if name in r]
        if points:
            right.plot(*zip(*points), style, label=label, markersize=3, linewidth=1.2)
    right.set_title("DPO: implicit rewards  beta * log(pi / pi_ref)")
    right.set_ylabel("reward")
    for ax in (left, right):
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)
