"""`picolm quickstart`: the whole pipeline on built-in data, in under ten minutes on a 2-core CPU.

story corpus -> BPE tokenizer -> pretraining -> SFT on story specifications -> DPO toward horror ->
evaluation of all three models -> plots -> report.md. Each stage is an ordinary data directory or run
directory under --out, so any of them can be inspected, evaluated or resumed with the other verbs. Every stage is
budgeted in steps, so every machine trains the same models and writes the same numbers for a seed; minutes are an
option.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

# torch, numpy and the rest are imported where used: the command line reads STEPS for its help

RECIPES = Path(__file__).parent / "recipes"
DPO_PAIRS = 2000  # 1600 to train on: the reference pass over them and DPO's steps fit the ten minutes
STEPS = {"pretraining": 300, "SFT": 180, "DPO": 120}  # each stage's budget unless it is given one
# Each part's seconds on the reference 2-core CPU (docs/BENCHMARKS.md, "The quickstart") as (fixed, per step): a
# step's share includes the evaluations, the fixed one set-up, DPO's reference pass and samples. The ETA scales them
# by this machine's pace on the stages it trained.
REFERENCE = {"data": (10.0, 0.0), "pretraining": (5.0, 0.48), "SFT": (5.0, 0.4), "DPO": (25.0, 0.65),
             "evaluation": (55.0, 0.0)}


@dataclass
class QuickstartOptions:
    out: Path
    device: str = "auto"
    base: str | None = None  # an existing base run or checkpoint: pretraining is skipped
    # a stage given none of its steps, epochs or minutes trains STEPS[stage]; minutes alone time it instead (its
    # schedule decays over them); minutes with steps or epochs: the first limit reached stops it
    pretrain_steps: int | None = None
    pretrain_minutes: float | None = None
    sft_steps: int | None = None
    sft_epochs: float | None = None  # replaces sft_steps
    sft_minutes: float | None = None
    dpo_steps: int | None = None
    dpo_epochs: float | None = None  # replaces dpo_steps
    dpo_minutes: float | None = None
    samples: int = 96  # held-out prompts whose generations are scored with the horror lexicon


class Eta:
    """The whole run's time left: the reference CPU's seconds for each part still to run, scaled by this machine's
    pace on the stages trained so far (the reference's own until then); a stage's time budget caps its part."""

    def __init__(self, parts: dict[str, tuple[float, float]]):
        self.parts = parts  # part -> (reference seconds, cap in seconds)
        self.taken = self.reference = 0.0

    def finished(self, part: str, seconds: float, reference: float = 0.0) -> None:
        """`reference`: the reference CPU's seconds for what this part trained here (0: nothing to learn from)."""
        self.parts.pop(part)
        if reference:
            self.taken, self.reference = self.taken + seconds, self.reference + reference

    def left(self) -> str:
        pace = self.taken / self.reference if self.reference else 1.0
        seconds = sum(min(reference * pace, cap) for reference, cap in self.parts.values())
        basis = (f"at this machine's pace so far, {pace:.2f}x the reference CPU's time" if self.reference
                 else "on the reference 2-core CPU")
        return f"about {seconds / 60:.1f} minutes left in all ({basis})"


def _prepare(out: Path, source: str, **options) -> Path:
    from picolm.data.pack import prepare
    from picolm.data.preparation import PrepareOptions
    from picolm.data.tokens import load_meta

    if (out / "meta.json").exists() and load_meta(out)["source"] == source:
        print(f"using {out}")
    else:
        print(f"preparing {source} into {out}")
        prepare(PrepareOptions(source=source, out=str(out), **options), log=lambda line: print("  " + line))
    return out


def _budget(stage: str, steps: int | None, minutes: float | None, epochs: float | None = None) -> dict:
    """A stage's limits as settings: its default steps unless it was given steps, epochs or minutes."""
    if steps is None and epochs is None and minutes is None:
        steps = STEPS[stage]
    return {"train.max_steps": steps, "train.epochs": epochs, "train.max_minutes": minutes}


def _describe(budget: dict) -> str:
    """`300 steps`, `1.5 min`, or two limits joined by `or`, the first reached stopping the run."""
    epochs, steps, minutes = budget["train.epochs"], budget["train.max_steps"], budget["train.max_minutes"]
    limits = [f"{epochs:g} epochs" if epochs is not None else f"{steps} steps" if steps is not None else None,
              f"{minutes:g} min" if minutes is not None else None]
    return " or ".join(limit for limit in limits if limit)


def _reference_seconds(part: str, steps: int) -> float:
    fixed, per_step = REFERENCE[part]
    return fixed + per_step * steps


def _plan(budgets: dict[str, dict]) -> dict[str, tuple[float, float]]:
    """Each part's reference seconds and cap; a stage budgeted in epochs is guessed at its default steps."""
    parts = {"data": (_reference_seconds("data", 0), math.inf)}
    for stage, budget in budgets.items():
        minutes = budget["train.max_minutes"]
        steps = budget["train.max_steps"] if budget["train.max_steps"] is not None else STEPS[stage]
        parts[stage] = (_reference_seconds(stage, steps), math.inf if minutes is None else minutes * 60)
    parts["evaluation"] = (_reference_seconds("evaluation", 0), math.inf)
    return parts


def _trained(target: str | Path) -> tuple[int, float]:
    """Steps trained and the training loop's seconds, from a run's last checkpoint or a checkpoint file (0 and 0
    before a run has one)."""
    from picolm.checkpoint import load_checkpoint

    target = Path(target)
    path = target if target.is_file() else target / "checkpoints" / "last.pt"
    if not path.is_file():
        return 0, 0.0
    state = load_checkpoint(path, mmap=True)
    return state["global_step"], state.get("elapsed_seconds", 0.0)


def _train(eta: Eta, stage: str, recipe: str, budget: dict, overrides: dict, run_dir: Path) -> Path:
    """Train one stage, or finish it after an interruption, saying first its budget and the whole run's time left."""
    from picolm.analysis.report import train_stage
    from picolm.config import build_config

    print(f"\n{stage}: {_describe(budget)}; {eta.left()}")
    steps_before, started = _trained(run_dir)[0], time.perf_counter()
    train_stage(stage, build_config(RECIPES / recipe, {**overrides, **budget}), run_dir)
    steps = _trained(run_dir)[0] - steps_before
    eta.finished(stage, time.perf_counter() - started, _reference_seconds(stage, steps) if steps else 0.0)
    return run_dir


def _budgets(options: QuickstartOptions) -> dict[str, dict]:
    budgets = {"pretraining": _budget("pretraining", options.pretrain_steps, options.pretrain_minutes),
               "SFT": _budget("SFT", options.sft_steps, options.sft_minutes, options.sft_epochs),
               "DPO": _budget("DPO", options.dpo_steps, options.dpo_minutes, options.dpo_epochs)}
    if options.base:
        del budgets["pretraining"]
    return budgets


def _summary(runs: dict[str, Path], budgets: dict[str, dict]) -> dict[str, dict]:
    """Per model, for the report: its budget, the steps it trained and its training loop's minutes."""
    summary = {}
    for (name, run), stage in zip(runs.items(), ("pretraining", "SFT", "DPO"), strict=True):
        steps, seconds = _trained(run)
        budget = _describe(budgets[stage]) if stage in budgets else "given (--base)"
        summary[name] = {"budget": budget, "steps": steps, "minutes": seconds / 60}
    return summary


def run_quickstart(options: QuickstartOptions) -> dict:
    """Runs every stage; returns the evaluation of base, SFT and DPO models."""
    from picolm.analysis.curves import plot_post_training
    from picolm.eval.post_training import evaluate_stages, write_report
    from picolm.locks import lock_folder
    from picolm.train.tracking import read_metrics

    started = time.perf_counter()
    out, device = Path(options.out), options.device
    budgets = _budgets(options)
    eta = Eta(_plan(budgets))
    print(f"quickstart: {', '.join(f'{stage} {_describe(b)}' for stage, b in budgets.items())}; {eta.left()}")
    with lock_folder(out):  # one quickstart writes a folder at a time
        data = out / "data"
        stories = _prepare(data / "stories", "stories", vocab_size=2048)
        sft_data = _prepare(data / "horror-sft", "horror-sft")
        dpo_data = _prepare(data / "horror-dpo", "horror-dpo", num_sequences=DPO_PAIRS)
        eta.finished("data", time.perf_counter() - started)
        base = options.base or _train(eta, "pretraining", "stories-tiny.yaml", budgets["pretraining"], {
            "data.path": str(stories), "train.device": device}, out / "base")
        sft = _train(eta, "SFT", "horror-sft.yaml", budgets["SFT"], {
            "data.path": str(sft_data), "train.init_from": str(base), "objective.monitor": str(dpo_data),
            "train.device": device}, out / "sft")
        dpo = _train(eta, "DPO", "horror-dpo.yaml", budgets["DPO"], {
            "data.path": str(dpo_data), "train.init_from": str(sft), "train.device": device}, out / "dpo")
        print(f"\n== evaluation on held-out specifications; {eta.left()}")
        runs = {"base": Path(base), "sft": sft, "dpo": dpo}
        results = evaluate_stages(runs, sft_data, dpo_data, samples=options.samples, device=device)
        curves = plot_post_training(read_metrics(sft), read_metrics(dpo), out / "plots" / "curves.png")
        minutes = (time.perf_counter() - started) / 60
        report = write_report(out, results, curves, minutes=minutes, training=_summary(runs, budgets))
    print(f"\nreport: {report} ({minutes:.1f} minutes in all)")
    return results
