"""Canonical example records and their checks.

SFT: `{"id", "prompt", "response"}`; preference: `{"id", "prompt", "chosen", "rejected"}`. Readers accept
`prompt` or `input` for the prompt and `response`, `output` or `completion` for the response. A row that cannot be
used stops the run with its file and line, or is reported and skipped when the user asks (`--skip-bad-rows`).
Prompts are written in one of two templates: the instruction template (Alpaca rows, and `picolm chat`) and the chat
template (conversations as lists of role/content messages).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from collections.abc import Iterable
from pathlib import Path

from picolm.errors import PicolmError

TASKS = ("text", "sft", "dpo")
RESPONSE_FIELDS = ("response", "output", "completion")
INSTRUCTION_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
INSTRUCTION_INPUT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


def render_instruction(instruction: str, input_text: str = "") -> str:
    """The Alpaca prompt: instruction, optional input, then the response header (the response follows it)."""
    if input_text and input_text.strip():
        return INSTRUCTION_INPUT_TEMPLATE.format(instruction=instruction.strip(), input=input_text.strip())
    return INSTRUCTION_TEMPLATE.format(instruction=instruction.strip())


CHAT_ROLES = ("system", "user", "assistant")
CHAT_HEADER = "<|{role}|>\n"
CHAT_TURN = CHAT_HEADER + "{content}\n"


def render_chat(messages: Iterable[dict]) -> str:
    """Messages in picolm's plain-text chat template: each one as "<|role|>\\n{content}\\n"."""
    return "".join(CHAT_TURN.format(role=m["role"], content=m["content"]) for m in messages)


def render_chat_prompt(messages: Iterable[dict]) -> str:
    """The conversation so far, then the assistant's header: the reply follows it."""
    return render_chat(messages) + CHAT_HEADER.format(role="assistant")


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


def response_of(row: dict) -> str | None:
    """`response`, else `output`, else `completion` (TRL's name)."""
    return next((_text(row, name) for name in RESPONSE_FIELDS if _text(row, name) is not None), None)


def sft_record(row: dict, bad: BadRows, path=None, line: int | None = None, index: int = 0) -> dict | None:
    """A checked `{id, prompt, response}` from a row with prompt|input and response|output|completion; None if
    skipped."""
    prompt, response = prompt_of(row), response_of(row)
    if prompt is None or response is None:
        bad.reject("unknown field layout for an SFT row: expected prompt (or input) and response (or output or "
                   f"completion) strings, found {', '.join(sorted(row)) or 'no fields'}", path=path, line=line)
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
    if ("prompt" in row or "input" in row) and any(name in row for name in RESPONSE_FIELDS):
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
