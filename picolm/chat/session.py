"""A chat session: the conversation kept in the prompt (its oldest turns dropped when the context fills), the streamed
reply and its seed, and the saved transcript."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from picolm.config import SEEDS, SamplingOptions
from picolm.data.records import render_chat, render_chat_prompt, render_instruction
from picolm.errors import PicolmError
from picolm.generate import TextGenerator

TEMPLATES = ("auto", "instruction", "chat", "none")
CLEARED = "(the conversation is cleared)"


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


def reply_seed(seed: int | None, turn: int) -> int:
    """The seed of a conversation's reply number `turn` (0 for the first since it began or was reset): seed + turn
    (mod 2**32) for a given seed, else a fresh one from the operating system."""
    end = SEEDS[1] + 1
    return secrets.randbelow(end) if seed is None else (seed + turn) % end


@dataclass(frozen=True)
class Turn:
    message: str
    reply: str
    seed: int


@dataclass
class Conversation:
    """The turns still in a conversation's prompt, oldest first, and the replies it has had since it began or was
    reset (the next reply's seed index); `label` names it in the transcript."""

    label: str = ""
    turns: list[Turn] = field(default_factory=list)
    answered: int = 0
    resets: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def clear(self) -> None:
        with self.lock:
            self.turns, self.answered, self.resets = [], 0, self.resets + 1


@dataclass(frozen=True)
class Request:
    """A message made ready to answer: its prompt ids (the latest turns that fit, then the message), the options its
    reply is sampled with (the seed set), and the oldest turns the prompt leaves out."""

    conversation: Conversation
    message: str
    prompt: list[int]
    options: SamplingOptions
    dropped: tuple[Turn, ...]
    resets: int  # the conversation's resets when asked: a reply finished after a reset is not kept in it


class ChatSession:
    """Messages answered in a conversation: the earlier turns stay in the prompt, each rendered with the template
    (the instruction template for fine-tuned models, "### Instruction: ... ### Response:", each turn ending with
    the EOS that ended each training example; the text as it is for pretrained ones, template "none", the turns
    one text the model continues). When they fill the context less the reply's room, the oldest are dropped."""

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
        self.conversation = Conversation()  # the terminal's; the web page keeps one per page
        self.turns = 0  # in the transcript
        self.writing = threading.Lock()

    def prompt_for(self, message: str) -> str:
        if self.template == "chat":  # as conversational (`messages`) rows are trained: "<|user|>\n...<|assistant|>\n"
            return render_chat_prompt([{"role": "user", "content": message}])
        return render_instruction(message) if self.template == "instruction" else message

    def settings(self) -> dict:
        return {"checkpoint": str(self.loaded.path), "template": self.template, **asdict(self.options)}

    def prompt_budget(self, options: SamplingOptions) -> int:
        """Tokens the prompt may take: the context less the reply's room (its max_new_tokens, at most half)."""
        block_size = self.loaded.model.config.block_size
        return block_size - min(options.max_new_tokens, block_size // 2)

    def turn_ids(self, turn: Turn) -> list[int]:
        """A finished turn as the prompt holds it."""
        encode, eos = self.loaded.tokenizer.encode, self.loaded.tokenizer.eos_id
        if self.template == "chat":  # earlier turns of a conversational row: "<|assistant|>\nreply\n", no EOS
            return encode(render_chat([{"role": "user", "content": turn.message},
                                       {"role": "assistant", "content": turn.reply}]))
        end = [eos] if self.template == "instruction" and eos is not None else []
        return encode(self.prompt_for(turn.message)) + encode(turn.reply) + end

    def request(self, message: str, conversation: Conversation | None = None,
                options: SamplingOptions | None = None) -> Request:
        """The prompt of a message in a conversation (the session's own by default) and its reply's seed; the
        conversation changes only when the reply is complete."""
        conversation = self.conversation if conversation is None else conversation
        options = options or self.options
        budget = self.prompt_budget(options)
        prompt = self.loaded.tokenizer.encode(self.prompt_for(message))
        if len(prompt) > budget:
            self.generator.warn(f"the message has {len(prompt)} tokens, more than the {budget} the context leaves "
                                f"beside the reply; keeping its last {budget}")
            prompt = prompt[-budget:]
        with conversation.lock:
            turns, answered, resets = list(conversation.turns), conversation.answered, conversation.resets
        kept = 0
        for turn in reversed(turns):
            ids = self.turn_ids(turn)
            if len(prompt) + len(ids) > budget:
                break
            prompt, kept = ids + prompt, kept + 1
        return Request(conversation, message, prompt, replace(options, seed=reply_seed(options.seed, answered)),
                       tuple(turns[:len(turns) - kept]), resets)

    def notice(self, request: Request) -> str | None:
        """What the user is told when the prompt leaves turns out."""
        if not request.dropped:
            return None
        turns = "oldest turn" if len(request.dropped) == 1 else f"{len(request.dropped)} oldest turns"
        return f"(dropped the {turns} to fit the {self.loaded.model.config.block_size}-token context)"

    def answer(self, request: Request) -> Iterator[str]:
        """The model's reply, piece by piece; once complete, it joins the conversation (the dropped turns leave it)
        and the transcript."""
        pieces = []
        for piece in self.generator.stream(request.prompt, request.options):
            pieces.append(piece)
            yield piece
        turn, conversation = Turn(request.message, "".join(pieces), request.options.seed), request.conversation
        dropped = {id(t) for t in request.dropped}
        with conversation.lock:
            if conversation.resets == request.resets:
                conversation.turns = [t for t in conversation.turns if id(t) not in dropped] + [turn]
                conversation.answered += 1
        self._save(request, turn)

    def reset(self, conversation: Conversation | None = None) -> None:
        """Forget a conversation's turns (the session's own by default): the next reply's seed index is 0 again."""
        conversation = self.conversation if conversation is None else conversation
        conversation.clear()
        if self.turns:
            self._write(f"# {conversation.label or 'conversation'} cleared (/reset)\n\n")

    def _save(self, request: Request, turn: Turn) -> None:
        lines = []
        if replace(request.options, seed=self.options.seed) != self.options:
            changed = {name: value for name, value in asdict(request.options).items() if name != "seed"}
            lines.append(f"# settings: {json.dumps(changed)}\n")
        if request.dropped:
            lines.append(f"# {self.notice(request)[1:-1]}\n")
        label = f"{request.conversation.label}, " if request.conversation.label else ""
        lines.append(f"# {label}seed {turn.seed}\nyou> {turn.message}\nmodel> {turn.reply.strip()}\n\n")
        self._write("".join(lines))
        self.turns += 1

    def _write(self, text: str) -> None:
        with self.writing:
            self.transcript.parent.mkdir(parents=True, exist_ok=True)
            with self.transcript.open("a", encoding="utf-8") as f:
                if self.turns == 0:
                    f.write(f"# settings: {json.dumps(self.settings())}\n\n")
                f.write(text)
