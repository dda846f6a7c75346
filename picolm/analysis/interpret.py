"""`picolm analyze`: what a trained model learned, as report-ready PNGs (and one JSON table).

Embedding PCA (tokens coloured by what they are), attention maps per layer and head for one input (softmax
probabilities, or a linear attention's normalised kernel weights: whatever `attn.weights` returns), and the
selectivity of each MLP unit for the sequence kinds of numeric data.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from picolm.analysis.curves import pyplot, save_figure
from picolm.errors import PicolmError

ANALYSES = ("pca", "attention", "neurons")
MAX_SHOWN_TOKENS = 48  # beyond this an attention map's tick labels become unreadable
SELECTIVE = 0.5  # a unit prefers a kind when that kind's mean is this many standard deviations above the others'
SHORT_SPECIALS = {"<|endoftext|>": "<eos>", "<|pad|>": "<pad>", "<|mask|>": "<mask>"}


def token_text(tokenizer, token_id: int) -> str:
    """A token as a short readable label: specials abbreviated, a leading space shown as '␣'."""
    text = tokenizer.decode([token_id])
    text = SHORT_SPECIALS.get(text, text)
    return text.replace(" ", "␣").replace("\n", "↵") or "∅"


def _specials(tokenizer) -> set[int]:
    return {i for i in (tokenizer.eos_id, tokenizer.pad_id, tokenizer.mask_id) if i is not None}


# ---------------------------------------------------------------- embedding PCA


def pca_2d(weights: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rows projected on the first two principal components (V, 2), and each component's share of the variance.

    Each component's sign is fixed so that its largest loading is positive: the picture does not flip between
    runs of the same model."""
    weights = weights.detach().double().cpu()
    centred = weights - weights.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:2] * vh[:2].gather(1, vh[:2].abs().argmax(1, keepdim=True)).sign()
    variance = s.square()
    return (centred @ axes.T).numpy(), (variance[:2] / variance.sum()).numpy()


def token_category(text: str) -> str:
    """What a (decoded) token of a character or BPE vocabulary is, for colouring."""
    core = text.lstrip(" ")
    if not core.strip():
        return "whitespace"
    if any(c.isdigit() for c in core):
        return "digits"
    if core.isalpha():
        return "word start" if text.startswith(" ") else "word piece"
    if all(c in string.punctuation for c in core):
        return "punctuation"
    return "other"


def embedding_pca(model, tokenizer, out_dir: str | Path, title: str = "") -> Path:
    """`embedding_pca.png`: every token embedding on the first two principal components."""
    plt = pyplot()
    coords, ratio = pca_2d(model.wte.weight)
    specials = sorted(_specials(tokenizer))
    fig, ax = plt.subplots(figsize=(8, 6.4), dpi=120, layout="constrained")
    if tokenizer.kind == "numeric":
        numbers = [i for i in range(tokenizer.vocab_size) if i not in specials]
        values = np.array([int(tokenizer.symbols[i]) for i in numbers])
        order = np.array(numbers)[np.argsort(values)]
        ax.plot(*coords[order].T, color="0.75", linewidth=0.6, zorder=1, label="numbers joined in order")
        points = ax.scatter(*coords[numbers].T, c=values, cmap="viridis", s=22, zorder=2)
        fig.colorbar(points, ax=ax, label="token value")
        step = max(1, round(len(numbers) / 10))
        labelled = [i for i, v in zip(numbers, values) if v % step == 0]
    else:
        texts = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
        categories = np.array([token_category(t) for t in texts], dtype=object)
        categories[specials] = "special"
        for i, name in enumerate(c for c in ("word start", "word piece", "digits", "punctuation", "whitespace", "other")
                                 if (categories == c).any()):
            chosen = np.flatnonzero(categories == name)
            ax.scatter(*coords[chosen].T, s=8 if len(texts) > 2000 else 18, alpha=0.6, color=f"C{i}",
                       label=f"{name} ({len(chosen)})")
        distance = np.linalg.norm(coords, axis=1)
        labelled = [int(i) for i in np.argsort(-distance) if i not in specials][:12]
    ax.scatter(*coords[specials].T, marker="X", s=70, color="crimson", zorder=3, label="special tokens")
    for i in [*labelled, *specials]:
        ax.annotate(token_text(tokenizer, i), coords[i], xytext=(4, 3), textcoords="offset points", fontsize=7)
    ax.set_xlabel(f"principal component 1 ({ratio[0]:.1%} of variance)")
    ax.set_ylabel(f"principal component 2 ({ratio[1]:.1%} of variance)")
    ax.set_title(f"{title}: token embeddings, first two principal components\n"
                 f"({tokenizer.vocab_size} tokens, {tokenizer.kind} vocabulary)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, Path(out_dir) / "embedding_pca.png")


# ---------------------------------------------------------------- attention maps


def encode_input(tokenizer, text: str, block_size: int, log=print) -> list[int]:
    """The token ids to show attention for; cut to what one map can show (and the context holds), with a note."""
    ids = tokenizer.encode(text)
    if not ids:
        raise PicolmError("the text encodes to no tokens", field="--text")
    limit = min(block_size, MAX_SHOWN_TOKENS)
    if len(ids) > limit:
        log(f"--text: {len(ids)} tokens; the attention maps show the first {limit}")
        ids = ids[:limit]
    return ids


@torch.no_grad()
def attention_weights(model, ids: list[int]) -> list[torch.Tensor]:
    """Per layer, the (H, T, T) weights each query token gives each key token for one input."""
    device = model.wte.weight.device
    idx = torch.tensor([ids], device=device)
    x, rotary, _ = model.embed(idx, torch.arange(len(ids), device=device))
    maps = []
    for block in model.blocks:
        maps.append(block.attn.weights(block.ln_1(x), rotary)[0].float().cpu())
        x = block(x, rotary)
    return maps


def attention_maps(model, tokenizer, text: str, out_dir: str | Path, title: str = "", log=print) -> Path:
    """`attention.png`: a grid of heatmaps, one row per layer and one column per head."""
    plt = pyplot()
    ids = encode_input(tokenizer, text, model.config.block_size, log)
    maps = attention_weights(model, ids)
    labels = [token_text(tokenizer, i) for i in ids]
    n_layer, n_head = len(maps), maps[0].shape[0]
    panel = max(1.8, min(3.4, 20 / max(n_layer, n_head)))
    fig, axes = plt.subplots(n_layer, n_head, figsize=(panel * n_head + 1.4, panel * n_layer + 1.0), dpi=120,
                             squeeze=False, layout="constrained")
    tick_size = max(4.0, min(8.0, 190 / len(ids) * panel / 3.4))
    for layer, row in enumerate(axes):
        for head, ax in enumerate(row):
            image = ax.imshow(maps[layer][head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {layer}, head {head}", fontsize=9)
            ax.set_xticks(range(len(ids)), labels if layer == n_layer - 1 else [], rotation=90, fontsize=tick_size)
            ax.set_yticks(range(len(ids)), labels if head == 0 else [], fontsize=tick_size)
            if layer == n_layer - 1:
                ax.set_xlabel("key (attended-to token)", fontsize=8)
            if head == 0:
                ax.set_ylabel("query token", fontsize=8)
    config = model.config
    direction = "causal" if config.causal else "bidirectional"
    what = "probabilities" if config.attention == "softmax" else "normalised kernel weights"
    fig.suptitle(f"{title}: {config.attention} attention {what} ({direction}), per layer and head\n"
                 f"input: {tokenizer.decode(ids)[:90]!r}", fontsize=10)
    fig.colorbar(image, ax=axes, shrink=min(0.8, 3 / n_layer + 0.2), label="attention weight")
    return save_figure(fig, Path(out_dir) / "attention.png")


# ---------------------------------------------------------------- neuron selectivity


@dataclass
class KindStatistics:
    """Per MLP unit: the mean activation for each kind (N, K), its mean and standard deviation over all tokens."""

    means: np.ndarray
    overall_mean: np.ndarray
    std: np.ndarray
    counts: np.ndarray  # tokens per kind (K,)


class KindAccumulator:
    """Sums of activations per kind (and of their squares overall), added to batch by batch."""

    def __init__(self, units: int, n_kinds: int):
        self.sums = torch.zeros(n_kinds, units, dtype=torch.float64)
        self.counts = torch.zeros(n_kinds, dtype=torch.float64)
        self.total = torch.zeros(units, dtype=torch.float64)
        self.squares = torch.zeros(units, dtype=torch.float64)

    def add(self, activations: torch.Tensor, kinds: torch.Tensor) -> None:
        """activations (M, N) for M tokens of kinds (M,) in [0, K)."""
        activations = activations.double().cpu()
        kinds = kinds.cpu()
        self.sums.index_add_(0, kinds, activations)
        self.counts += torch.bincount(kinds, minlength=len(self.counts)).double()
        self.total += activations.sum(0)
        self.squares += activations.square().sum(0)

    def result(self) -> KindStatistics:
        n = self.counts.sum().clamp(min=1)
        mean = self.total / n
        std = (self.squares / n - mean.square()).clamp(min=0).sqrt()
        means = self.sums / self.counts.clamp(min=1)[:, None]
        return KindStatistics(means.T.numpy(), mean.numpy(), std.numpy(), self.counts.numpy())


def selectivity(stats: KindStatistics) -> tuple[np.ndarray, np.ndarray]:
    """Each unit's preferred kind (argmax of its kind means) and selectivity: how far that kind's mean lies
    above the mean of the other kinds' means, in units of the unit's standard deviation over all tokens.

    Standardising (rather than the ReLU-era (max - rest) / (max + rest)) keeps it meaningful for GELU and
    SwiGLU units, whose activations can be negative."""
    means = stats.means[:, stats.counts > 0]
    preferred = means.argmax(1)
    best = means.max(1)
    others = (means.sum(1) - best) / max(means.shape[1] - 1, 1)
    index = np.where(stats.std > 1e-8, (best - others) / np.maximum(stats.std, 1e-8), 0.0)
    present = np.flatnonzero(stats.counts > 0)
    return present[preferred], index


@torch.no_grad()
def mlp_kind_statistics(model, tokens: np.ndarray, kinds: np.ndarray, n_kinds: int, eos_id: int,
                        max_windows: int = 256, batch_size: int = 16) -> list[KindStatistics]:
    """Per layer, the MLP hidden activations (the input of `mlp.proj`: after GELU, or SwiGLU's gate times up)
    averaged per sequence kind over validation windows. End-of-text tokens and tokens of no kind are left out."""
    from picolm.data.loader import window_batches

    batches = window_batches(tokens, model.config.block_size, batch_size, max_windows, kinds, eos_id)
    device = model.wte.weight.device
    accumulators = [KindAccumulator(block.mlp.proj.in_features, n_kinds) for block in model.blocks]
    captured = {}
    hooks = [block.mlp.proj.register_forward_pre_hook(lambda _, args, i=i: captured.__setitem__(i, args[0]))
             for i, block in enumerate(model.blocks)]
    try:
        for batch in batches:
            row_kinds = batch["kinds"][:, :-1]  # the kinds of the inputs; end-of-text is -1
            keep = (row_kinds >= 0) & (row_kinds < n_kinds)
            model.hidden_states(batch["input_ids"].to(device))
            for i, accumulator in enumerate(accumulators):
                accumulator.add(captured[i].cpu()[keep], row_kinds[keep])
    finally:
        for hook in hooks:
            hook.remove()
    return [a.result() for a in accumulators]


def selectivity_table(layers: list[KindStatistics], kind_names: list[str]) -> dict:
    """The `neurons.json` layers: per unit its preferred kind, selectivity and mean per kind; a count per kind."""
    table = []
    for layer, stats in enumerate(layers):
        preferred, index = selectivity(stats)
        summary = {name: int(((preferred == k) & (index >= SELECTIVE)).sum()) for k, name in enumerate(kind_names)}
        summary["unselective"] = int((index < SELECTIVE).sum())
        units = [{"unit": n, "preferred": kind_names[preferred[n]], "selectivity": round(float(index[n]), 4),
                  "means": {name: round(float(stats.means[n, k]), 4) for k, name in enumerate(kind_names)}}
                 for n in range(len(index))]
        table.append({"layer": layer, "units": len(units), "summary": summary, "neurons": units})
    return table


def plot_selectivity(layers: list[KindStatistics], kind_names: list[str], path: Path, title: str,
                     detail: str = "") -> Path:
    """One heatmap per layer: units (sorted by preferred kind, then selectivity) x kinds, each kind's mean
    relative to the unit's overall mean in standard deviations."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(layers), figsize=(1.6 + 3.4 * len(layers), 7.5), dpi=120, squeeze=False,
                             layout="constrained")
    limit = 1e-8
    panels = []
    for ax, (layer, stats) in zip(axes[0], enumerate(layers)):
        preferred, index = selectivity(stats)
        order = np.lexsort((-index, preferred))
        z = (stats.means - stats.overall_mean[:, None]) / np.maximum(stats.std, 1e-8)[:, None]
        limit = max(limit, float(np.abs(z).max()))
        panels.append((ax, z[order]))
        bounds = np.searchsorted(preferred[order], np.arange(len(kind_names) + 1))
        for edge in bounds[1:-1]:
            ax.axhline(edge - 0.5, color="black", linewidth=0.6)
        ax.set_yticks([(lo + hi - 1) / 2 for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo],
                      [f"{name} ({hi - lo})" for name, lo, hi in zip(kind_names, bounds[:-1], bounds[1:]) if hi > lo],
                      fontsize=7)
        ax.set_xticks(range(len(kind_names)), kind_names, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"layer {layer} ({len(order)} units)", fontsize=9)
        ax.set_xlabel("sequence kind")
    axes[0][0].set_ylabel("MLP units, grouped by preferred kind (count)")
    for ax, z in panels:
        image = ax.imshow(z, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    fig.suptitle(f"{title}: MLP unit activation by sequence kind\n{detail}", fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.8, label="kind mean - overall mean (standard deviations)")
    return save_figure(fig, path)


def neuron_selectivity(model, tokenizer, data_dir: str | Path, out_dir: str | Path, title: str = "",
                       split: str = "val", max_windows: int = 256) -> tuple[Path, Path, dict]:
    """`neurons.png` and `neurons.json` from a numeric data directory's `<split>.bin` and `<split>.kind.bin`;
    returns their paths and the table. Data without sequence kinds is refused (PicolmError)."""
    from picolm.data.tokens import load_meta, load_split

    meta = load_meta(data_dir)
    kind_names = meta.get("kinds")
    if not kind_names or not (Path(data_dir) / f"{split}.kind.bin").is_file():
        raise PicolmError("no sequence kinds in this data (only numeric data has them): neuron selectivity skipped",
                          path=data_dir)
    tokens, kinds = load_split(data_dir, split, tokenizer)
    layers = mlp_kind_statistics(model, tokens, kinds, len(kind_names), meta["eos_id"], max_windows)
    table = {"data": str(data_dir), "split": split, "tokens": int(layers[0].counts.sum()),
             "tokens_per_kind": dict(zip(kind_names, map(int, layers[0].counts))), "kinds": kind_names,
             "activation": "MLP hidden unit (input of mlp.proj), at every token except end-of-text",
             "selectivity": "(mean of preferred kind - mean of the other kinds' means) / std over all tokens",
             "selective_threshold": SELECTIVE, "layers": selectivity_table(layers, kind_names)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "neurons.json"
    json_path.write_text(json.dumps(table, indent=1), encoding="utf-8")
    png = plot_selectivity(layers, kind_names, out_dir / "neurons.png", title,
                           f"{split} split, {table['tokens']:,} tokens; units sorted by preferred kind, then selectivity")
    return png, json_path, table


# ---------------------------------------------------------------- the verb


def default_text(tokenizer, data_dir: str | Path | None, length: int = 24) -> str:
    """The first document of the data's validation split (from its opening end-of-text), else a fixed sample."""
    from picolm.data.tokens import read_tokens

    path = Path(data_dir) / "val.bin" if data_dir else None
    if path is not None and path.is_file():
        tokens = np.asarray(read_tokens(path)[:4096])
        eos = np.flatnonzero(tokens == tokenizer.eos_id)
        if len(eos) >= 2:
            end = min(eos[1], eos[0] + length)
            return tokenizer.decode(tokens[eos[0]:end].tolist())
    return "3 4 5 6 7 8 9 10" if tokenizer.kind == "numeric" else "Once upon a time, there was a little girl."


def parse_what(what: str) -> list[str]:
    chosen = [w.strip() for w in what.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in ANALYSES]
    if unknown or not chosen:
        raise PicolmError(f"expected some of {', '.join(ANALYSES)}, got {what!r}", field="--what")
    return chosen


def analyze_run(target: str | Path, what: str = ",".join(ANALYSES), text: str | None = None,
                data: str | Path | None = None, out: str | Path | None = None, max_windows: int = 256,
                device="cpu", log=print) -> list[Path]:
    """Run the chosen analyses on a run directory or checkpoint; returns the files written."""
    from picolm.data.tokens import check_tokenizer
    from picolm.loading import load_model
    from picolm.models.gpt import GPT

    chosen = parse_what(what)
    loaded = load_model(target, device=device)
    if not isinstance(loaded.model, GPT):
        raise PicolmError("analyze looks inside picolm's own models; this checkpoint wraps a Hugging Face model",
                          path=loaded.path)
    run_dir = loaded.path.parent.parent if loaded.path.parent.name == "checkpoints" else loaded.path.parent
    out = Path(out) if out else run_dir / "analysis"
    run_data = (loaded.checkpoint.get("train_config") or {}).get("data", {}).get("path")
    data_dir = data or (run_data if run_data and (Path(run_data) / "meta.json").is_file() else None)
    model, tokenizer, title = loaded.model, loaded.tokenizer, run_dir.name
    if data_dir is not None:
        check_tokenizer(data_dir, tokenizer)
    written = []
    if "pca" in chosen:
        written.append(embedding_pca(model, tokenizer, out, title))
    if "attention" in chosen:
        sample = text if text is not None else default_text(tokenizer, data_dir)
        written.append(attention_maps(model, tokenizer, sample, out, title, log))
    if "neurons" in chosen:
        written += _neurons(model, tokenizer, data_dir, out, title, max_windows, log)
    return written


def _neurons(model, tokenizer, data_dir, out: Path, title: str, max_windows: int, log) -> list[Path]:
    """Neuron selectivity when the data has sequence kinds; otherwise a note saying why it was skipped."""
    from picolm.data.tokens import load_meta

    if data_dir is None:
        log("neurons: skipped (the run's data directory is not here; pass --data DIR)")
        return []
    if not load_meta(data_dir).get("kinds"):
        log(f"neurons: skipped ({data_dir} has no sequence kinds; only numeric data has them)")
        return []
    png, json_path, table = neuron_selectivity(model, tokenizer, data_dir, out, title, max_windows=max_windows)
    for layer in table["layers"]:
        log(f"layer {layer['layer']}: units preferring each kind (selectivity >= {SELECTIVE}): "
            + ", ".join(f"{k} {n}" for k, n in layer["summary"].items()))
    return [png, json_path]
