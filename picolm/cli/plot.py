"""`picolm plot`: the training curves of any runs, from their metrics.jsonl."""

from __future__ import annotations

from picolm.cli.common import Formatter, output_folder


def register(verbs) -> None:
    p = verbs.add_parser("plot", formatter_class=Formatter, help="plot the training curves of runs",
                         description="Draw the curves of finished or running runs from their metrics.jsonl: "
                                     "OUT/loss.png, the training and validation loss of every run overlaid against "
                                     "step; and OUT/post_training.png where some runs logged them: the SFT monitor "
                                     "(held-out chosen vs rejected log-probabilities, from runs trained with "
                                     "--objective.monitor) and DPO's implicit rewards of chosen vs rejected responses.",
                         epilog="examples:\n"
                                "  picolm plot runs/numeric\n"
                                "  picolm plot runs/quickstart/sft runs/quickstart/dpo --out plots/qs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", type=output_folder, default="plots", help="folder for the PNG files")
    p.set_defaults(run=run)


def run(args) -> int:
    from picolm.analysis.curves import write_plots

    for path in write_plots(args.runs, args.out):
        print(f"wrote {path}")
    return 0
