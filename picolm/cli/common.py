"""What the verbs share: the help formatter, the settings and sampling options read from their dataclasses (so the
help cannot drift from the code), the `--section.key value` settings, and the argument types that refuse bad input
where it is parsed: numbers in their declared range (`count`, `number`), fractions that sum to 1 (`Fractions`), and
the paths a verb writes (`output_folder`, `output_file`)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import textwrap
from pathlib import Path

from picolm.config import MAX_INT, Range, real, whole
from picolm.errors import PicolmError


def threads_sleep_when_waiting() -> None:
    """OpenMP threads that wait sleep instead of spinning (`OMP_WAIT_POLICY=PASSIVE`, unless the environment already
    says how they wait), for the verbs that train: beside another busy process, GNU OpenMP's threads (torch's) spin
    300,000 times before they sleep and slowed training far beyond the share of the cores lost. Decoding keeps the
    spin: its many small parallel operations ran 2.5-3x slower with sleeping threads (docs/BENCHMARKS.md, "Training
    on a busy machine"). libgomp reads this once, when torch is imported: call it before; waiting changes no result."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class Parser(argparse.ArgumentParser):
    """An argument parser whose epilog may be a function, called only when the help is shown (it may import torch,
    which `picolm --help` and the tiny CPU runs should not wait for); its errors are one line."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()

    def error(self, message: str):
        """One line on stderr and exit status 2, as every other refusal (`--help` shows the usage)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none to show, and what a number or an output path
    takes."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default not in (
            "", argparse.SUPPRESS)  # `is`: a default of 0 is worth showing, False is not
        notes = ["default: %(default)s"] if action.option_strings and shown and "%(default)" not in text else []
        if isinstance(action.type, (Number, Fractions, OutputPath)):
            notes.append(action.type.describe())
        return f"{text} ({'; '.join(notes)})" if notes else text


# ---------------------------------------------------------------- argument types: refused where parsed


class Number:
    """An argparse type: a number in a Range (config.py), so that `argument --limit: must be at least 1, got -5` is
    the one line a bad value gets. A whole number may be written 1e9."""

    def __init__(self, within: Range):
        self.within = within

    def __call__(self, text: str):
        value = self._parse(text)
        why = self.within.why_not(value)
        if why:
            raise argparse.ArgumentTypeError(f"{why}, got {text}")
        return value

    def _parse(self, text: str):
        try:
            if not self.within.integer:
                return float(text)
            try:
                return int(text)
            except ValueError:
                value = float(text)  # 1e9
                if value.is_integer():  # never NaN or infinity
                    return int(value)
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f"expected a {'whole ' if self.within.integer else ''}number, got {text!r}")

    def describe(self) -> str:
        return self.within.describe()

    def __repr__(self) -> str:  # argparse names a type by it
        return "whole number" if self.within.integer else "number"


def count(low: int = 1, high: int = MAX_INT, unit: str = "") -> Number:
    """Whole numbers from `low` to `high` (`unit` names what is counted, for the message)."""
    return Number(whole(low, high, unit))


def number(low: float, high: float, *, above: bool = False, below: bool = False, tiny: float = 0.0) -> Number:
    """Finite numbers from `low` to `high` (`above` / `below`: that end excluded; `tiny`: see config.Range)."""
    return Number(real(low, high, above=above, below=below, tiny=tiny))


class Fractions:
    """An argparse type: `names` comma-separated shares (finite, at least 0) that sum to 1, as a tuple."""

    def __init__(self, *names: str):
        self.names = names

    def __call__(self, text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {len(self.names)} numbers like 0.8,0.1,0.1, got "
                                             f"{text!r}") from None
        if len(values) != len(self.names):
            raise argparse.ArgumentTypeError(f"expected {len(self.names)} fractions: {','.join(self.names)}")
        if not all(math.isfinite(v) and v >= 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
            raise argparse.ArgumentTypeError(f"split ratios {values} must be non-negative and sum to 1")
        return values

    def describe(self) -> str:
        return f"{','.join(self.names)}: shares that sum to 1"

    def __repr__(self) -> str:
        return "fractions"


class OutputPath:
    """An argparse type for a path a verb writes, a folder or a file; missing parent folders are made. Refused where
    parsed, naming the option: an empty path, a path under a file, a folder where a file goes or a file where a folder
    goes, and a place this user may not write in. The verb may refuse more (a folder holding other files)."""

    def __init__(self, kind: str):
        self.kind = kind

    def __call__(self, text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"names no {self.kind}")
        try:
            why = self._why_not(Path(text))
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte, a folder we may not look in
            why = getattr(exc, "strerror", None) or str(exc)
        if why:
            raise argparse.ArgumentTypeError(f"{text}: {why}")
        return text

    def _why_not(self, path: Path) -> str | None:
        if path.is_dir() and self.kind == "file":
            return "is a folder; name a file"
        if path.exists() and not path.is_dir() and self.kind == "folder":
            return "is a file; name a folder"
        own = (path,) if self.kind == "folder" else ()  # a file that exists is replaced: its folder is what counts
        nearest = next(p for p in (*own, *path.parents) if p.exists())  # '.' or '/' at the latest
        if not nearest.is_dir():
            return f"{nearest} is a file, not a folder"
        if not os.access(nearest, os.W_OK | os.X_OK):
            return f"cannot write in {nearest}"
        return None

    def describe(self) -> str:
        return "missing folders are made"

    def __repr__(self) -> str:
        return f"output {self.kind}"


output_folder = OutputPath("folder")  # a folder a verb writes into (made with its missing parents)
output_file = OutputPath("file")  # a file a verb writes (its missing parent folders made)


def settings_help(width: int = 118) -> str:
    """Every `--section.field` setting with its help and default, from the config dataclasses' fields."""
    from picolm.config import PRESETS, SECTIONS
    from picolm.methods import FAMILIES

    lines = textwrap.wrap("settings (--section.field VALUE, or section: field: VALUE in a recipe; a number is never "
                          "NaN or infinite, and one closer to 0 than float32 holds, 1.2e-38, is refused):", width)
    for section, cls in SECTIONS.items():
        lines.append(f"  {section}:")
        for f in dataclasses.fields(cls):
            default = f.default_factory() if callable(f.default_factory) else f.default
            name = f"--{section}.{f.name}"
            within = f.metadata.get("range")
            text = f"{f.metadata.get('help', '')} (default: {default!r}{'; ' + within.describe() if within else ''})"
            lines += textwrap.wrap(text, width, initial_indent=f"    {name:<32} ", subsequent_indent=" " * 37,
                                   break_on_hyphens=False)
    lines += textwrap.wrap(f"model.preset: {', '.join(PRESETS)} (expanded first; explicit fields win)", width,
                           initial_indent="  ", subsequent_indent="    ")
    lines += textwrap.wrap(f"objective.kind: auto, {', '.join(FAMILIES)} (the method families)", width,
                           initial_indent="  ", subsequent_indent="    ")
    return "\n".join(lines)


def split_settings(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Take `--section.key value` / `--section.key=value` settings out of argv; return the rest and them."""
    rest, settings, i = [], {}, 0
    while i < len(argv):
        token = argv[i]
        key, eq, value = token[2:].partition("=")
        if not (token.startswith("--") and "." in key):
            rest.append(token)
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                raise PicolmError("missing value", field=key)
            value = argv[i + 1]
            i += 1
        settings[key] = value
        i += 1
    return rest, settings


def _argument(f: dataclasses.Field) -> dict:
    """argparse keywords for a SamplingOptions field, from its annotation and metadata (a number's range too)."""
    from picolm.config import REMASKING, TEMPERATURE_SCHEDULES

    kind = str(f.type).replace(" | None", "")
    keywords = {"help": f.metadata["help"], "default": f.default}
    if kind == "bool":
        return {**keywords, "action": "store_true"}
    if kind.startswith("tuple"):
        return {"help": keywords["help"], "action": "append", "metavar": "TEXT"}
    if kind in ("int", "float"):
        return {**keywords, "type": Number(f.metadata["range"])}
    choices = {"remasking": REMASKING, "temperature_schedule": TEMPERATURE_SCHEDULES}.get(f.name)
    return {**keywords, **({"choices": choices} if choices else {})}


def add_sampling_options(p: argparse.ArgumentParser, max_new_tokens: int = 100,
                         changes: dict[str, dict] | None = None) -> None:
    """Every SamplingOptions field as an option (`--max-new-tokens`, ...); help and defaults from the dataclass, but
    for a verb's `changes` (field -> argparse keywords, e.g. chat's own default and help for --seed)."""
    from picolm.config import SamplingOptions, flag

    group = p.add_argument_group("sampling")
    for f in dataclasses.fields(SamplingOptions):
        keywords = _argument(f)
        if f.name == "max_new_tokens":
            keywords["default"] = max_new_tokens
        group.add_argument(flag(f.name), **{**keywords, **(changes or {}).get(f.name, {})})


def add_dtype_option(p: argparse.ArgumentParser) -> None:
    from picolm.config import WEIGHT_DTYPES

    p.add_argument("--dtype", default="float32", choices=WEIGHT_DTYPES,
                   help="the linear layers' weights: float32 (exact), or weight-only bfloat16 / int8 (one scale per "
                        "row), which change the numbers a little and decode faster where the weights outgrow the "
                        "CPU's caches (docs/BENCHMARKS.md); the norms, residual stream and cache stay float32, the "
                        "products take bfloat16")


def sampling_options(args):
    """The SamplingOptions the sampling flags ask for, checked."""
    from picolm.config import SamplingOptions

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingOptions)}
    options = SamplingOptions(**{**values, "stop": tuple(values["stop"] or ())})
    options.validate()
    return options


def device(name: str):
    from picolm.runtime import resolve_device

    return resolve_device(name, field="--device")
