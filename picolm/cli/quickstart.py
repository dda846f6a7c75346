"""`picolm quickstart`: the whole pipeline on built-in data (picolm/quickstart.py)."""

from __future__ import annotations

from picolm.cli.common import Formatter, count, number, output_folder


def register(verbs) -> None:
    p = verbs.add_parser("quickstart", formatter_class=Formatter, help="the whole pipeline on built-in data",
                         description="Story corpus -> BPE tokenizer -> pretraining -> SFT on story specifications "
                                     "-> DPO toward horror -> evaluation -> plots -> report.md, in under ten "
                                     "minutes on a 2-core CPU. Each stage is budgeted in steps, so every machine "
                                     "trains the same models and writes the same numbers for a seed. Minutes given "
                                     "alone for a stage time it instead; given with its steps or epochs, the first "
                                     "limit reached stops it. An interrupted quickstart resumes where it stopped.")
    p.add_argument("--out", type=output_folder, default="runs/quickstart",
                   help="folder for the data, the three runs and the report")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--base", default=None, metavar="RUN_DIR",
                   help="start from this pretrained run or checkpoint instead of pretraining")
    _stage_options(p, "pretrain", "pretraining", epochs=False)
    _stage_options(p, "sft", "SFT")
    _stage_options(p, "dpo", "DPO")
    p.add_argument("--samples", type=count(1, 100_000, "prompts"), default=96,
                   help="held-out prompts to sample per model for the report")
    p.set_defaults(run=run)


def _stage_options(p, prefix: str, stage: str, epochs: bool = True) -> None:
    """--PREFIX-steps (or --PREFIX-epochs) and --PREFIX-minutes for one stage."""
    from picolm.quickstart import STEPS

    limit = p.add_mutually_exclusive_group() if epochs else p
    other = f"--{prefix}-epochs or minutes" if epochs else "minutes"
    limit.add_argument(f"--{prefix}-steps", type=count(1, 1_000_000), default=None,
                       help=f"{stage} steps (default: {STEPS[stage]} unless {other} alone are given)")
    if epochs:
        limit.add_argument(f"--{prefix}-epochs", type=number(0, 1e6, above=True), default=None,
                           help=f"{stage} epochs instead of steps")
    p.add_argument(f"--{prefix}-minutes", type=number(0, 1e6, above=True), default=None,
                   help=f"{stage} time budget: alone, the stage is timed instead (numbers then depend on the machine)")


def run(args) -> int:
    from picolm.quickstart import QuickstartOptions, run_quickstart

    options = QuickstartOptions(**{k: v for k, v in vars(args).items() if k not in ("verb", "debug", "run",
                                                                                     "settings")})
    run_quickstart(options)
    return 0
