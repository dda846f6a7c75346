"""`picolm quickstart`: the whole pipeline on built-in data (picolm/quickstart.py)."""

from __future__ import annotations

from picolm.cli.common import Formatter


def register(verbs) -> None:
    p = verbs.add_parser("quickstart", formatter_class=Formatter, help="the whole pipeline on built-in data",
                         description="Story corpus -> BPE tokenizer -> pretraining -> SFT on story specifications "
                                     "-> DPO toward horror -> evaluation -> plots -> report.md, in about ten "
                                     "minutes on a 2-core CPU. Steps or epochs given for a stage replace its time "
                                     "budget. An interrupted quickstart resumes where it stopped.")
    p.add_argument("--out", default="runs/quickstart", help="folder for the data, the three runs and the report")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--base", default=None, metavar="RUN_DIR",
                   help="start from this pretrained run or checkpoint instead of pretraining")
    p.add_argument("--pretrain-minutes", type=float, default=2.5, help="pretraining time budget")
    p.add_argument("--pretrain-steps", type=int, default=None, help="pretraining steps instead")
    p.add_argument("--sft-minutes", type=float, default=1.5, help="SFT time budget")
    p.add_argument("--sft-steps", type=int, default=None, help="SFT steps instead")
    p.add_argument("--sft-epochs", type=float, default=None, help="SFT epochs instead")
    p.add_argument("--dpo-minutes", type=float, default=1.5, help="DPO time budget")
    p.add_argument("--dpo-steps", type=int, default=None, help="DPO steps instead")
    p.add_argument("--dpo-epochs", type=float, default=None, help="DPO epochs instead")
    p.add_argument("--samples", type=int, default=96, help="held-out prompts to sample per model for the report")
    p.set_defaults(run=run)


def run(args) -> int:
    from picolm.quickstart import QuickstartOptions, run_quickstart

    options = QuickstartOptions(**{k: v for k, v in vars(args).items() if k not in ("verb", "debug", "run",
                                                                                     "settings")})
    run_quickstart(options)
    return 0
