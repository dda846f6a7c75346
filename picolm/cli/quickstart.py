"""`picolm quickstart`: the built-in pipeline recipe `quickstart` (picolm/recipes/pipelines/quickstart.yaml); the
options only set its stages' budgets."""

from __future__ import annotations

from pathlib import Path

from picolm.cli.common import Formatter, count, number, output_folder

RECIPE = "quickstart"
OPTION_PREFIX = {"pretraining": "pretrain", "sft": "sft", "dpo": "dpo"}  # stage -> its --PREFIX-steps options


def register(verbs) -> None:
    p = verbs.add_parser("quickstart", formatter_class=Formatter, help="the whole pipeline on built-in data",
                         description="Story corpus -> BPE tokenizer -> pretraining -> SFT on story specifications "
                                     "-> DPO toward horror -> evaluation -> plots -> report.md, in under ten "
                                     "minutes on a 2-core CPU: `picolm pipeline quickstart` with its stages' "
                                     "budgets as options. Each stage is budgeted in steps, so every machine "
                                     "trains the same models and writes the same numbers for a seed. Minutes given "
                                     "alone for a stage time it instead; given with its steps or epochs, the first "
                                     "limit reached stops it. An interrupted quickstart resumes where it stopped.")
    p.add_argument("--out", type=output_folder, default="runs/quickstart",
                   help="folder for the data, the three runs and the report")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--base", default=None, metavar="RUN_DIR",
                   help="start from this pretrained run or checkpoint instead of pretraining")
    steps = recipe_steps()
    _stage_options(p, "pretrain", "pretraining", steps["pretraining"], epochs=False)
    _stage_options(p, "sft", "SFT", steps["sft"])
    _stage_options(p, "dpo", "DPO", steps["dpo"])
    p.add_argument("--samples", type=count(1, 100_000, "prompts"), default=None,
                   help="held-out prompts to sample per model for the report (default: the recipe's 96)")
    p.set_defaults(run=run, trains=True)


def recipe_steps() -> dict[str, int]:
    """Each stage's steps in the built-in recipe, for the help (read without importing torch)."""
    import yaml

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "pipelines" / f"{RECIPE}.yaml"
    stages = yaml.safe_load(recipe.read_text(encoding="utf-8"))["stages"]
    return {name: stage["settings"]["train.max_steps"] for name, stage in stages.items()}


def _stage_options(p, prefix: str, stage: str, default_steps: int, epochs: bool = True) -> None:
    """--PREFIX-steps (or --PREFIX-epochs) and --PREFIX-minutes for one stage."""
    limit = p.add_mutually_exclusive_group() if epochs else p
    other = f"--{prefix}-epochs or minutes" if epochs else "minutes"
    limit.add_argument(f"--{prefix}-steps", type=count(1, 1_000_000), default=None,
                       help=f"{stage} steps (default: {default_steps} unless {other} alone are given)")
    if epochs:
        limit.add_argument(f"--{prefix}-epochs", type=number(0, 1e6, above=True), default=None,
                           help=f"{stage} epochs instead of steps")
    p.add_argument(f"--{prefix}-minutes", type=number(0, 1e6, above=True), default=None,
                   help=f"{stage} time budget: alone, the stage is timed instead (numbers then depend on the machine)")


def budget(steps: int | None, minutes: float | None, epochs: float | None = None) -> dict:
    """A stage's limits as settings: none given keeps the recipe's steps; minutes alone time the stage instead."""
    if steps is None and epochs is None and minutes is None:
        return {}
    return {"train.max_steps": steps, "train.epochs": epochs, "train.max_minutes": minutes}


def stage_settings(args) -> dict[str, object]:
    """The budget options as the pipeline's per-stage settings (`sft.train.max_steps`, ...)."""
    chosen = {}
    for stage, prefix in OPTION_PREFIX.items():
        limits = budget(getattr(args, f"{prefix}_steps"), getattr(args, f"{prefix}_minutes"),
                        getattr(args, f"{prefix}_epochs", None))
        chosen.update({f"{stage}.{key}": value for key, value in limits.items()})
    return chosen


def run(args) -> int:
    from picolm.pipeline import PipelineOptions, load_pipeline, run_pipeline

    run_pipeline(load_pipeline(RECIPE), PipelineOptions(out=Path(args.out), device=args.device, init_from=args.base,
                                                        samples=args.samples, settings=stage_settings(args)))
    return 0
