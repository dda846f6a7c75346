"""`picolm quickstart`: the whole pipeline on built-in data, in about ten minutes on a 2-core CPU.

story corpus -> BPE tokenizer -> pretraining -> SFT on story specifications -> DPO toward horror ->
evaluation of all three models -> plots -> report.md. Each stage is an ordinary data directory or run
directory under --out, so any of them can be inspected, evaluated or resumed with the other verbs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from picolm.analysis.report import train_stage
from picolm.config import build_config
from picolm.data.pack import prepare
from picolm.data.preparation import PrepareOptions
from picolm.data.tokens import load_meta

RECIPES = Path(__file__).parent / "recipes"
DPO_PAIRS = 2000  # 1600 to train on: the reference pass over them and an epoch fit the time budget


@dataclass
class QuickstartOptions:
    out: Path
    device: str = "auto"
    base: str | None = None  # an existing base run or checkpoint: pretraining is skipped
    pretrain_minutes: float | None = 2.5
    pretrain_steps: int | None = None
    sft_minutes: float | None = 1.5
    sft_steps: int | None = None
    sft_epochs: float | None = None
    dpo_minutes: float | None = 1.5
    dpo_steps: int | None = None
    dpo_epochs: float | None = None
    samples: int = 96  # held-out prompts whose generations are scored with the horror lexicon


def _prepare(out: Path, source: str, **options) -> Path:
    if (out / "meta.json").exists() and load_meta(out)["source"] == source:
        print(f"using {out}")
    else:
        print(f"preparing {source} into {out}")
        prepare(PrepareOptions(source=source, out=str(out), **options), log=lambda line: print("  " + line))
    return out


def _limits(minutes: float | None, steps: int | None, epochs: float | None = None) -> dict:
    """Steps or epochs, when given, replace the recipe's time budget."""
    if steps is None and epochs is None:
        return {"train.max_minutes": minutes, "train.max_steps": None, "train.epochs": None}
    return {"train.max_minutes": None, "train.max_steps": steps, "train.epochs": epochs}


def _train(stage: str, recipe: str, overrides: dict, run_dir: Path) -> Path:
    return train_stage(stage, build_config(RECIPES / recipe, overrides), run_dir)


def run_quickstart(options: QuickstartOptions) -> dict:
    """Runs every stage; returns the evaluation of base, SFT and DPO models."""
    from picolm.analysis.curves import plot_post_training
    from picolm.eval.post_training import evaluate_stages, write_report
    from picolm.train.tracking import read_metrics

    started = time.perf_counter()
    out, device = Path(options.out), options.device
    data = out / "data"
    stories = _prepare(data / "stories", "stories", vocab_size=2048)
    sft_data = _prepare(data / "horror-sft", "horror-sft")
    dpo_data = _prepare(data / "horror-dpo", "horror-dpo", num_sequences=DPO_PAIRS)
    base = options.base or _train("pretraining", "stories-tiny.yaml", {
        "data.path": str(stories), "train.device": device,
        **_limits(options.pretrain_minutes, options.pretrain_steps)}, out / "base")
    sft = _train("SFT", "horror-sft.yaml", {
        "data.path": str(sft_data), "train.init_from": str(base), "objective.monitor": str(dpo_data),
        "train.device": device, **_limits(options.sft_minutes, options.sft_steps, options.sft_epochs)}, out / "sft")
    dpo = _train("DPO", "horror-dpo.yaml", {
        "data.path": str(dpo_data), "train.init_from": str(sft), "train.device": device,
        **_limits(options.dpo_minutes, options.dpo_steps, options.dpo_epochs)}, out / "dpo")
    print("\n== evaluation on held-out specifications")
    results = evaluate_stages({"base": Path(base), "sft": sft, "dpo": dpo}, sft_data, dpo_data,
                              samples=options.samples, device=device)
    curves = plot_post_training(read_metrics(sft), read_metrics(dpo), out / "plots" / "curves.png")
    report = write_report(out, results, curves, minutes=(time.perf_counter() - started) / 60)
    print(f"\nreport: {report} ({(time.perf_counter() - started) / 60:.1f} minutes in all)")
    return results
