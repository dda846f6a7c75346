"""What the verbs share: the help formatter, the settings and sampling options read from their dataclasses (so the
help cannot drift from the code), and the `--section.key value` settings."""

from __future__ import annotations

import argparse
import dataclasses
import textwrap

from picolm.errors import PicolmError


class Parser(argparse.ArgumentParser):
    """An argument parser whose epilog may be a function, called only when the help is shown (it may import torch,
    which `picolm --help` and the tiny CPU runs should not wait for)."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default not in (
            "", argparse.SUPPRESS)  # `is`: a default of 0 is worth showing, False is not
        if action.option_strings and shown and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def settings_help(width: int = 118) -> str:
    """Every `--section.field` setting with its help and default, from the config dataclasses' fields."""
    from picolm.config import PRESETS, SECTIONS
    from picolm.methods import FAMILIES

    lines = ["settings (--section.field VALUE, or section: field: VALUE in a recipe):"]
    for section, cls in SECTIONS.items():
        lines.append(f"  {section}:")
        for f in dataclasses.fields(cls):
            default = f.default_factory() if callable(f.default_factory) else f.default
            name = f"--{section}.{f.name}"
            text = f"{f.metadata.get('help', '')} (default: {default!r})"
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
    """argparse keywords for a SamplingOptions field, from its annotation and metadata."""
    from picolm.config import REMASKING, TEMPERATURE_SCHEDULES

    kind = str(f.type).replace(" | None", "")
    keywords = {"help": f.metadata["help"], "default": f.default}
    if kind == "bool":
        return {**keywords, "action": "store_true"}
    if kind.startswith("tuple"):
        return {"help": keywords["help"], "action": "append", "metavar": "TEXT"}
    choices = {"remasking": REMASKING, "temperature_schedule": TEMPERATURE_SCHEDULES}.get(f.name)
    return {**keywords, "type": {"int": int, "float": float, "str": str}[kind], **({"choices": choices} if choices
                                                                                  else {})}


def add_sampling_options(p: argparse.ArgumentParser, max_new_tokens: int = 100) -> None:
    """Every SamplingOptions field as an option (`--max-new-tokens`, ...); help and defaults from the dataclass."""
    from picolm.config import SamplingOptions, flag

    group = p.add_argument_group("sampling")
    for f in dataclasses.fields(SamplingOptions):
        keywords = _argument(f)
        if f.name == "max_new_tokens":
            keywords["default"] = max_new_tokens
        group.add_argument(flag(f.name), **keywords)


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
