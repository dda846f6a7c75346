"""`picolm pipeline`: prepare -> pretrain (or --init-from) -> SFT -> DPO -> evaluation -> report.md from one recipe
(picolm/pipeline.py)."""

from __future__ import annotations

from pathlib import Path

from picolm.cli.common import Formatter, count, output_folder

BUILT_IN = Path(__file__).resolve().parent.parent / "recipes" / "pipelines"


def register(verbs) -> None:
    names = ", ".join(sorted(p.stem for p in BUILT_IN.glob("*.yaml")))
    p = verbs.add_parser("pipeline", formatter_class=Formatter, help="the whole pipeline from one recipe, on any data",
                         description="Prepare the recipe's data (built-in sources, local files, hub names), pretrain "
                                     "(or start from --init-from), SFT, DPO, evaluate every model on held-out data "
                                     "(losses, both preference accuracies, ROUGE-L, chrF, format, a lexicon) and write "
                                     f"OUT/report.md with its tables, curves and samples. Built-in recipes: {names} "
                                     "(the quickstart is `picolm quickstart`). Run it again to continue where it "
                                     "stopped; a step whose inputs changed since it ran (a setting, its data, the "
                                     "run it starts from) is refused. Settings such as --train.max_steps 50 apply to "
                                     "every stage; --sft.train.max_steps 50 to one (pretraining, sft, dpo).",
                         epilog="examples:\n"
                                "  picolm pipeline quickstart --out runs/quickstart\n"
                                "  picolm pipeline my-pipeline.yaml --init-from runs/base --sft.train.max_steps 500\n"
                                "  picolm pipeline tinystories-alpaca-hh --hub-dir ~/hub-copies --device cuda")
    p.add_argument("recipe", metavar="RECIPE", help="a pipeline recipe (.yaml) or a built-in one's name")
    p.add_argument("--out", type=output_folder, default=None,
                   help="folder for the data, the runs and the report (default: runs/pipeline-NAME)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--init-from", default=None, metavar="RUN_DIR",
                   help="start from this pretrained run or checkpoint: the pretraining stage is skipped")
    p.add_argument("--hub-dir", default=None, help="local copies of hub datasets (as `picolm prepare --hub-dir`)")
    p.add_argument("--samples", type=count(1, 100_000, "prompts"), default=None,
                   help="held-out prompts to sample per model for the report (default: the recipe's)")
    p.set_defaults(run=run, takes_settings=True, trains=True)


def run(args) -> int:
    from picolm.pipeline import PipelineOptions, load_pipeline, run_pipeline

    options = PipelineOptions(out=Path(args.out) if args.out else None, device=args.device, init_from=args.init_from,
                              hub_dir=args.hub_dir, samples=args.samples, settings=args.settings)
    run_pipeline(load_pipeline(args.recipe), options)
    return 0
