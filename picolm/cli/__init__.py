"""`picolm <verb>`: the command line, one module per verb (each `register`s its parser and the function that runs
it). Bad input exits with status 2 and one line on stderr."""

from __future__ import annotations

import argparse
import sys

from picolm.cli import analyze, chat, compare, eval, export, generate, pipeline, plot, prepare, quickstart, train
from picolm.cli.common import Formatter, Parser, split_settings, threads_sleep_when_waiting
from picolm.errors import PicolmError

VERBS = (prepare, train, eval, generate, compare, plot, analyze, chat, export, pipeline, quickstart)
VERBS_HELP = ("prepare data, train (pretrain, SFT, DPO), evaluate, compare, plot, analyze, generate, chat, serve, "
              "export to Hugging Face, run a whole pipeline from a recipe, or the quickstart")


def parser() -> argparse.ArgumentParser:
    root = Parser(prog="picolm", formatter_class=Formatter,
                  description="picolm: a small-language-model lab. Tokenize, pretrain, fine-tune (SFT, DPO), "
                              "evaluate and sample small language models.")
    root.add_argument("--debug", action="store_true", help="show full tracebacks")
    verbs = root.add_subparsers(dest="verb", metavar="VERB", help=VERBS_HELP)
    for verb in VERBS:
        verb.register(verbs)
    return root


def parse(root: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The verb's arguments, with the `--section.key value` settings as `args.settings`. argparse ends `--help` and
    every refusal (one line, status 2) with SystemExit."""
    try:
        argv, settings = split_settings(argv)
    except PicolmError as exc:
        root.error(str(exc))
    args = root.parse_args(argv)
    if settings and args.verb is not None and not getattr(args, "takes_settings", False):
        root.error(f"settings such as --{next(iter(settings))} apply to `picolm train`, `compare` and `pipeline` only")
    args.settings = settings
    return args


def main(argv: list[str] | None = None) -> int:
    root = parser()
    try:
        args = parse(root, sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # --help, or bad arguments already named on one line
        return exc.code if isinstance(exc.code, int) else 0
    if args.verb is None:
        root.print_help()
        return 0
    if getattr(args, "trains", False):  # before the verb imports torch
        threads_sleep_when_waiting()
    try:
        return args.run(args)
    except PicolmError as exc:
        if args.debug:
            raise
        print(f"picolm {args.verb}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"picolm {args.verb}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the machine's side (a full or read-only disk, a missing folder): one line, the path
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"picolm {args.verb}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
