"""A chat session: how a user's message becomes a prompt, the streamed reply, and the saved transcript."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from picolm.config import SamplingOptions
from picolm.data.records import render_instruction
from picolm.errors import PicolmError
from picolm.generate import TextGenerator

TEMPLATES = ("auto", "instruction", "none")


def fine_tuned(checkpoint: dict) -> bool:
    """Whether the checkpoint's run trained on prompt/response data (SFT or DPO), whatever its family."""
    from picolm.data.tokens import load_meta

    if "task" in checkpoint:
        return checkpoint["task"] in ("sft", "dpo")
    config = checkpoint.get("train_config", {})  # checkpoints written before they recorded their task
    kind = config.get("objective", {}).get("kind", "auto")
    if kind != "auto":
        return kind in ("sft", "dpo")
    try:
        return load_meta(config.get("data", {}).get("path", "")).get("task") in ("sft", "dpo")
    except PicolmError:
        return False


def session_folder(chats_dir: Path, now: float | None = None) -> Path:
    """chats/<Month_DD_YYYY_HH_MM_SS>, one per session."""
    return Path(chats_dir) / time.strftime("%B_%d_%Y_%H_%M_%S", time.localtime(now))


class ChatSession:
    """Each message is answered on its own: with the instruction template for fine-tuned models ("### Instruction:
    ... ### Response:"), as text to continue for pretrained ones (template "none")."""

    def __init__(self, loaded, options: SamplingOptions, device="cpu", template: str = "auto",
                 chats_dir: str | Path = "chats", warn=None):
        if template not in TEMPLATES:
            raise PicolmError(f"must be one of {', '.join(TEMPLATES)}", field="--template")
        self.generator = TextGenerator(loaded.model, loaded.tokenizer, device, warn=warn)
        self.generator.check(options)
        self.loaded, self.options = loaded, options
        self.template = template if template != "auto" else ("instruction" if fine_tuned(loaded.checkpoint)
                                                              else "none")
        self.transcript = session_folder(Path(chats_dir)) / "transcript.txt"
        self.turns = 0

    def prompt_for(self, message: str) -> str:
        return render_instruction(message) if self.template == "instruction" else message

    def settings(self) -> dict:
        return {"checkpoint": str(self.loaded.path), "template": self.template, **asdict(self.options)}

    def reply(self, message: str, options: SamplingOptions | None = None) -> Iterator[str]:
        """The model's reply, piece by piece; the turn goes into the transcript when it is complete."""
        options = options or self.options
        pieces = []
        for piece in self.generator.stream(self.prompt_for(message), options):
            pieces.append(piece)
            yield piece
        self._save(message, "".join(pieces), options)

    def _save(self, message: str, reply: str, options: SamplingOptions) -> None:
        self.transcript.parent.mkdir(parents=True, exist_ok=True)
        with self.transcript.open("a", encoding="utf-8") as f:
            if self.turns == 0:
                f.write(f"# settings: {json.dumps(self.settings())}\n\n")
            if options is not self.options:
                f.write(f"# settings: {json.dumps(asdict(options))}\n")
            f.write(f"you> {message}\nmodel> {reply.strip()}\n\n")
        self.turns += 1
