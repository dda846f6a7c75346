"""Bad input, as a class. Every numeric option of every verb and every numeric setting, found by walking the real
parsers and the config dataclasses (so an option is covered the day it is added), meets zero, negative, NaN,
infinite, tiny and huge values: each is refused in one line naming it, or means what its help says (MEANINGS). Every
path a verb writes is refused in one line where it cannot be written."""

import argparse
import dataclasses
import functools
import json
import re

import pytest

from picolm.cli import main, parse, parser
from picolm.cli.common import Fractions, Number, OutputPath
from picolm.config import SECTIONS, SamplingOptions, flag, numeric
from picolm.errors import PicolmError

EDGES = ("0", "-1", "nan", "inf", "-inf", "1e-300", "1000000000", "1e300", "1" + "0" * 30)

# The edge values an option or setting accepts, each with the words of its help that say what it means there. An
# accepted value missing here fails, and so does one listed here that is refused: the table is the decision.
MEANINGS = {
    "--limit": {"1000000000": "at most N documents"},
    "--shard-tokens": {"1000000000": "tokens per train shard"},
    "--workers": {"0": "0 encodes in the main process"},
    "--port": {"0": "0 picks a free one"},
    "--seed": {"0": "seed", "1000000000": "seed"},
    "--temperature": {"0": "0 decodes greedily"},
    "--max-windows": {"1000000000": "at most"},
    "model.vocab_size": {"0": "0 takes the tokenizer's"},
    "model.dropout": {"0": "0: none"},
    "model.rope_base": {"1000000000": "frequency base"},
    "model.mask_id": {"-1": "set by training"},
    "model.ignore_id": {"-1": "set by training"},
    "model.sdd_k": {"0": "set by training"},
    "train.max_steps": {"1000000000": "the limit reached first stops the run"},
    "train.min_lr_ratio": {"0": "0: at zero"},
    "train.warmup_steps": {"0": "0: none", "1000000000": "longer than the run, the peak lr is never reached"},
    "train.warmup_ratio": {"0": "0: none"},
    "train.weight_decay": {"0": "0: none"},
    "train.beta1": {"0": "0: no average"},
    "train.beta2": {"0": "0: no average"},
    "train.muon_momentum": {"0": "0: none"},
    "train.grad_clip": {"0": "0 disables clipping"},
    "train.eval_every": {"1000000000": "the last step is always evaluated"},
    "train.eval_batches": {"1000000000": "at most"},
    "train.early_stop_patience": {"0": "0 disables", "1000000000": "evaluations without improvement"},
    "train.checkpoint_every": {"0": "0: at every evaluation only", "1000000000": "steps between extra"},
    "train.log_every": {"1000000000": "more than the run's steps: none"},
    "train.seed": {"0": "seed", "1000000000": "seed"},
    "train.num_samples": {"0": "0: none"},
    "objective.label_smoothing": {"0": "0: plain DPO"},
    "lora.rank": {"0": "0: off"},
    "lora.dropout": {"0": "0: none"},
}

# TEMPORARY: verbs whose owners are wiring their options to picolm/cli/common.py's types (count, number,
# output_folder). Their undeclared options are expected failures until then; remove this set once they are done.
PENDING: set[str] = set()

OUTPUT_NAMES = re.compile(r"(^|_)(out|json|chats)(_|$)")  # dests that name a path a verb writes


@functools.cache
def root() -> argparse.ArgumentParser:
    """The real parser, built once: parsing leaves it as it was."""
    return parser()


def verbs() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in root()._actions if isinstance(a, argparse._SubParsersAction)).choices


def name(action: argparse.Action) -> str:
    """How argparse names an argument in its errors."""
    return "/".join(action.option_strings) or action.metavar or action.dest


def walk(keep) -> list:
    """pytest params (verb, action) of every argument of every verb that `keep(action)`."""
    return [pytest.param(verb, action, id=f"{verb} {name(action)}") for verb, p in verbs().items()
            for action in p._actions if keep(action) and not isinstance(action, argparse._HelpAction)]


def looks_numeric(action: argparse.Action) -> bool:
    plain = action.type in (int, float) or (action.type is None and action.nargs != 0 and isinstance(
        action.default, (int, float)) and not isinstance(action.default, bool))
    return plain or isinstance(action.type, (Number, Fractions))


def argv(verb: str, action: argparse.Action, value: str) -> list[str]:
    """The shortest command line of `verb` that gives `action` this value (the other required arguments: "x")."""
    line = [verb]
    for other in verbs()[verb]._actions:
        if other.dest == action.dest:
            line += [f"{other.option_strings[0]}={value}"] if other.option_strings else [value]
        elif not other.option_strings:
            line.append("x")
        elif other.required:
            line += [other.option_strings[0], "x"]
    return line


def outcome(line: list[str], capsys) -> tuple[argparse.Namespace | None, list[str]]:
    """(the parsed arguments, or None when refused) and the lines on stderr."""
    try:
        args = parse(root(), line)
    except SystemExit as exc:
        assert exc.code == 2
        args = None
    return args, capsys.readouterr().err.strip().splitlines()


def refused_or_meant(key: str, value: str, refused: bool, lines: list[str], named: str, help_text: str) -> None:
    """A refusal is one line naming the option; an acceptance is a meaning the table and the help both give."""
    meaning = MEANINGS.get(key, {}).get(value)
    if refused:
        assert len(lines) == 1 and named in lines[0], lines
        assert meaning is None, f"{key} {value} is refused, yet MEANINGS gives it a meaning"
    else:
        assert meaning is not None, f"{key} accepts {value}: refuse it, or add its meaning to MEANINGS and its help"
        assert meaning in help_text, f"the help of {key} does not say {meaning!r}"


# ---------------------------------------------------------------- options of the verbs


@pytest.mark.parametrize("verb, action", walk(looks_numeric))
def test_every_numeric_option_declares_its_range(verb, action):
    if not isinstance(action.type, (Number, Fractions)):
        if verb in PENDING:
            pytest.xfail(f"PENDING: {verb} {name(action)} is not wired to count()/number() yet")
        pytest.fail(f"{verb} {name(action)}: declare its range with type=count(...) or number(...)")
    assert action.help, f"{verb} {name(action)} has no help"
    if isinstance(action.default, (int, float)):
        assert action.type.within.why_not(action.default) is None, "the default is out of its own range"


@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("verb, action", walk(lambda a: isinstance(a.type, Number)))
def test_numeric_options_refuse_edge_values_in_one_line_or_mean_what_the_help_says(verb, action, edge, capsys,
                                                                                  tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, lines = outcome(argv(verb, action, edge), capsys)
    refused_or_meant(action.option_strings[0], edge, args is None, lines, f"argument {name(action)}: ",
                     action.help)
    if args is not None:
        assert getattr(args, action.dest) == (int(edge) if action.type.within.integer else float(edge))


@pytest.mark.parametrize("share, accepted", [("0", True), ("1e-300", True), ("-1", False), ("nan", False),
                                              ("inf", False), ("1000000000", False), ("1e300", False)])
@pytest.mark.parametrize("verb, action", walk(lambda a: isinstance(a.type, Fractions)))
def test_fractions_must_be_finite_shares_that_sum_to_one(verb, action, share, accepted, capsys, tmp_path,
                                                         monkeypatch):
    """0 (and what is as good as 0) is an empty share; every other edge cannot be a share of a whole."""
    monkeypatch.chdir(tmp_path)
    rest = 1 - float(share) if accepted else 0.5
    args, lines = outcome(argv(verb, action, f"{rest!r},{share},0"), capsys)
    assert (args is not None) == accepted
    if not accepted:
        assert len(lines) == 1 and f"argument {name(action)}: " in lines[0]


@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("field", [f for f in dataclasses.fields(SamplingOptions) if numeric(f)], ids=lambda f: f.name)
def test_sampling_options_built_in_code_are_checked_as_on_the_command_line(field, edge, capsys, tmp_path,
                                                                          monkeypatch):
    """The web chat and the library build SamplingOptions without argparse: the same values are refused."""
    monkeypatch.chdir(tmp_path)
    action = next(a for a in verbs()["generate"]._actions if a.dest == field.name)
    args, _ = outcome(argv("generate", action, edge), capsys)
    value = int(edge) if re.fullmatch(r"-?\d+", edge) else float(edge)
    try:
        SamplingOptions(**{field.name: value}).validate()
        refused = False
    except PicolmError as exc:
        refused = True
        assert str(exc).startswith(f"{flag(field.name)}: ")
    assert refused == (args is None)


# ---------------------------------------------------------------- settings (--section.field VALUE)

# settings that apply only beside another one: walked with it
CONTEXT = {"train.muon_": [("train.optimizer", "muon")]}
SETTINGS = [pytest.param(f"{section}.{f.name}", f, id=f"{section}.{f.name}") for section, cls in SECTIONS.items()
            for f in dataclasses.fields(cls) if numeric(f)]


@pytest.mark.parametrize("key, field", SETTINGS)
def test_every_numeric_setting_declares_its_range(key, field):
    assert field.metadata.get("range") is not None, f"{key}: declare its range: setting(..., within=whole/real(...))"


@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("key, field", SETTINGS)
def test_settings_refuse_edge_values_in_one_line_or_mean_what_the_help_says(key, field, edge, tmp_path, capsys):
    """Through `picolm train --dry-run` with no data: a refused setting is named before the data is looked for."""
    missing = tmp_path / "no-data"
    context = [f"--{k}={v}" for prefix, settings in CONTEXT.items() if key.startswith(prefix) for k, v in settings]
    assert main(["train", "--data", str(missing), "--dry-run", *context, f"--{key}={edge}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    accepted = len(lines) == 1 and f"{missing}: no such data directory" in lines[0]
    refused_or_meant(key, edge, not accepted, lines, f"error: {key}: ", field.metadata["help"])


# ---------------------------------------------------------------- paths a verb writes


@pytest.mark.parametrize("verb, action", walk(lambda a: bool(OUTPUT_NAMES.search(a.dest))))
def test_every_output_path_is_declared(verb, action):
    if not isinstance(action.type, OutputPath):
        if verb in PENDING:
            pytest.xfail(f"PENDING: {verb} {name(action)} is not wired to output_folder/output_file yet")
        pytest.fail(f"{verb} {name(action)}: declare it with type=output_folder or output_file")


def bad_places(tmp_path, kind: str) -> dict[str, tuple[str, str]]:
    """name -> (path, what the refusal says)."""
    a_file, a_folder = tmp_path / "file.txt", tmp_path / "folder"
    a_file.write_text("x")
    a_folder.mkdir()
    wrong = (str(a_file), "is a file; name a folder") if kind == "folder" else \
        (str(a_folder), "is a folder; name a file")
    return {"under a file": (str(a_file / "out"), f"{a_file} is a file, not a folder"), "wrong kind": wrong,
            "empty": ("", f"names no {kind}"), "under a file, deeper": (str(a_file / "a" / "b"), "is a file")}


@pytest.mark.parametrize("place", ["under a file", "wrong kind", "empty", "under a file, deeper"])
@pytest.mark.parametrize("verb, action", walk(lambda a: isinstance(a.type, OutputPath)))
def test_output_paths_that_cannot_be_written_are_refused_in_one_line(verb, action, place, tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, why = bad_places(tmp_path, action.type.kind)[place]
    args, lines = outcome(argv(verb, action, path), capsys)
    assert args is None and len(lines) == 1, lines
    assert f"argument {name(action)}: " in lines[0] and why in lines[0]


@pytest.mark.parametrize("verb, action", walk(lambda a: isinstance(a.type, OutputPath)))
def test_output_paths_with_missing_folders_are_accepted(verb, action, tmp_path, capsys, monkeypatch):
    """The verb makes them, as every such option's help says; parsing makes nothing, so a refusal later leaves no
    folder behind."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "new" / "deeper" / "out"
    args, _ = outcome(argv(verb, action, str(path)), capsys)
    assert args is not None and getattr(args, action.dest) == str(path)
    assert action.type.describe() == "missing folders are made" and not (tmp_path / "new").exists()


@pytest.mark.parametrize("verb, action", walk(lambda a: isinstance(a.type, OutputPath) and a.type.kind == "file"))
def test_output_files_that_exist_are_replaced(verb, action, tmp_path, capsys):
    """Writing a result again (eval --json twice) replaces the file."""
    path = tmp_path / "out.json"
    path.write_text("{}")
    args, _ = outcome(argv(verb, action, str(path)), capsys)
    assert args is not None and getattr(args, action.dest) == str(path)


def test_prepare_and_eval_json_make_their_missing_folders(tmp_path, capsys):
    from picolm.cli.eval import write_json

    out = tmp_path / "a" / "b" / "data"
    assert main(["prepare", "--source", "numeric", "--out", str(out), "--num-sequences", "50"]) == 0
    assert (out / "meta.json").is_file()
    write_json(tmp_path / "c" / "d" / "metrics.json", {"loss": 1.5})
    assert json.loads((tmp_path / "c" / "d" / "metrics.json").read_text()) == {"loss": 1.5}


# ---------------------------------------------------------------- what the documented meanings do


def test_the_smallest_temperature_samples_the_argmax_and_a_tiny_top_p_keeps_one_token():
    import torch

    from picolm.methods.sampling import filter_logits, next_tokens

    logits = torch.tensor([[30.0, 29.0, -5.0, 0.0], [0.0, 1.0, 50.0, 49.5]])
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert next_tokens(logits, SamplingOptions(temperature=1e-4), generator).tolist() == [0, 2]
    kept = filter_logits(logits, top_p=1.2e-38).isfinite().sum(-1)
    assert kept.tolist() == [1, 1]


def test_main_returns_the_status_of_argparse_refusals_and_help(capsys):
    assert main(["prepare", "--source", "numeric", "--out", "x", "--limit", "-5"]) == 2
    assert capsys.readouterr().err.strip() == "picolm prepare: error: argument --limit: must be at least 1, got -5"
    assert main(["prepare"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["prepare", "--help"]) == 0
    assert "(at least 1)" in capsys.readouterr().out
