"""Canonical example records and their checks.

SFT: `{"id", "prompt", "response"}`; preference: `{"id", "prompt", "chosen", "rejected"}`. Readers accept
`prompt` or `input` for the prompt. A row that cannot be used stops the run with its file and line, or is
reported and skipped when the user asks (`--skip-bad-rows`).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from picolm.errors import PicolmError

TASKS = ("text", "sft", "dpo")
INSTRUCTION_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
INSTRUCTION_INPUT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


def render_instruction(instruction: str, input_text: str = "") -> str:
    """The Alpaca prompt: instruction, optional input, then the response header (the response follows it)."""
    if input_text and input_text.strip():
        return INSTRUCTION_INPUT_TEMPLATE.format(instruction=instruction.strip(), input=input_text.strip())
    return INSTRUCTION_TEMPLATE.format(instruction=instruction.strip())


@dataclass
class BadRows:
    """Raises on the first bad row, or, with `skip=True`, records it and lets the caller drop it."""

    skip: bool = False
    skipped: list[str] = field(default_factory=list)

    def reject(self, message: str, *, path=None, line: int | None = None, row_field: str | None = None) -> None:
        error = PicolmError(message + ("" if self.skip else " (pass --skip-bad-rows to report and skip such rows)"),
                            path=path, line=line, field=row_field)
        if not self.skip:
            raise error
        self.skipped.append(str(error))

    def report(self, log=None) -> None:
        log = log or (lambda text: print(text, file=sys.stderr))
        if self.skipped:
            log(f"skipped {len(self.skipped)} bad row(s):")
            for line in self.skipped[:20]:
                log(f"  {line}")
            if len(self.skipped) > 20:
                log(f"  ... and {len(self.skipped) - 20} more")


def _text(row: dict, name: str) -> str | None:
    value = row.get(name)
    return value if isinstance(value, str) else None


def prompt_of(row: dict) -> str | None:
    """`prompt`, else `input`."""
    return _text(row, "prompt") if _text(row, "prompt") is not None else _text(row, "input")


def sft_record(row: dict, bad: BadRows, path=None, line: int | None = None, index: int = 0) -> dict | None:
    """A checked `{id, prompt, response}` from a row with prompt|input and response|output; None if skipped."""
    prompt = prompt_of(row)
    response = _text(row, "response") if _text(row, "response") is not None else _text(row, "output")
    if prompt is None or response is None:
        bad.reject("unknown field layout for an SFT row: expected prompt (or input) and response (or output) "
                   f"strings, found {', '.join(sorted(row)) or 'no fields'}", path=path, line=line)
        return None
    if not response.strip():
        bad.reject("empty response", path=path, line=line, row_field="response")
        return None
    return {"id": str(row.get("id", index)), "prompt": prompt, "response": response}


def pair_record(row: dict, bad: BadRows, path=None, line: int | None = None, index: int = 0) -> dict | None:
    """A checked `{id, prompt, chosen, rejected}`; None if skipped."""
    prompt, chosen, rejected = prompt_of(row), _text(row, "chosen"), _text(row, "rejected")
    if prompt is None or chosen is None or rejected is None:
        bad.reject("unknown field layout for a preference row: expected prompt (or input), chosen and rejected "
                   f"strings, found {', '.join(sorted(row)) or 'no fields'}", path=path, line=line)
        return None
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not value.strip():
            bad.reject(f"empty {name} response", path=path, line=line, row_field=name)
            return None
    if chosen == rejected:
        bad.reject("chosen and rejected are identical: the pair teaches nothing", path=path, line=line,
                   row_field="rejected")
        return None
    return {"id": str(row.get("id", index)), "prompt": prompt, "chosen": chosen, "rejected": rejected}


def detect_task(row: dict) -> str | None:
    """The task a row's fields describe, or None for an unknown layout."""
    if "chosen" in row and "rejected" in row:
        return "dpo"
    if "instruction" in row or "messages" in row:
        return "sft"
    if ("prompt" in row or "input" in row) and ("response" in row or "output" in row):
        return "sft"
    if "text" in row:
        return "text"
    return None


def write_records(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
