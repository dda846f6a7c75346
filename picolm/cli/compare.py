"""`picolm compare`: finished runs side by side, or a whole experiment from a compare recipe."""

from __future__ import annotations

from picolm.cli.common import Formatter, output_folder
from picolm.errors import PicolmError


def register(verbs) -> None:
    p = verbs.add_parser("compare", formatter_class=Formatter, help="compare runs, or run a whole experiment",
                         description="With run directories: their final metrics side by side (a markdown table) and "
                                     "their loss curves overlaid, written to OUT/compare.md and OUT/compare.png.\n\n"
                                     "With a compare recipe (a .yaml file, or a built-in one by name: numeric-compare, "
                                     "positions-compare, ar-vs-diffusion, optimizers-compare): prepare its data, "
                                     "train every run of it for the same steps, evaluate, sample and analyse each, "
                                     "and write "
                                     "OUT/table.md, OUT/results.json and OUT/curves.png (OUT defaults to "
                                     "runs/compare-NAME). Run it again to continue an interrupted experiment. "
                                     "Settings such as --train.max_steps 3000 or --model.preset small apply to "
                                     "every run.",
                         epilog="examples:\n"
                                "  picolm compare runs/a runs/b --out compare\n"
                                "  picolm compare numeric-compare\n"
                                "  picolm compare positions-compare --train.max_steps 5000 --device cuda")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR | RECIPE")
    p.add_argument("--out", type=output_folder, default=None,
                   help="output folder (default: compare, or runs/compare-NAME for a recipe)")
    p.add_argument("--data", default=None, help="recipe: an already prepared data directory to use instead")
    p.add_argument("--device", default="auto", help="recipe: where to train and evaluate")
    p.set_defaults(run=run, takes_settings=True, trains=True)


def run(args) -> int:
    from picolm.analysis.compare import compare_runs
    from picolm.analysis.experiment import is_experiment, load_experiment, run_experiment

    if len(args.runs) == 1 and is_experiment(args.runs[0]):
        report = run_experiment(load_experiment(args.runs[0]), args.out, args.settings, args.data, args.device)
        print(f"\nreport: {report}")
        return 0
    if args.settings or args.data:
        raise PicolmError("settings and --data apply to a compare recipe, not to finished runs",
                          field="--" + next(iter(args.settings)) if args.settings else "--data")
    table, report = compare_runs(args.runs, args.out or "compare")
    print(table)
    print(f"\nreport: {report}")
    return 0
