"""Text in, text out, for every model: a prompt's tokens, the family's sampler (picolm/methods/sampling.py: a KV-cache
decoder for left-to-right models, the denoisers of the diffusion families), the text piece by piece (streaming),
stop strings. `TextGenerator` serves the CLI, chat, the web page, evaluation and report samples; it never asks which
family a model belongs to, only for its sampler.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch

from picolm.config import SamplingOptions
from picolm.methods import family_of
from picolm.methods.sampling import Sampler


def sampler_for(model) -> Sampler:
    """The sampler of the family a model belongs to."""
    return family_of(model.config).sampler


def generate_ids(model, prompts: list[list[int]], options: SamplingOptions, eos_id: int | None = None,
                 vocab_size: int | None = None, device="cpu") -> list[list[int]]:
    """The new token ids of every prompt, without the EOS that ended it."""
    return sampler_for(model).generate_ids(model, prompts, options, eos_id, vocab_size, device)


class TextStream:
    """The text of a growing list of tokens, piece by piece: a piece is held back while it may be a partial
    UTF-8 character or the start of a stop string, and the text ends before the first stop string."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.text, self.sent, self.stopped = "", 0, False

    def push(self, token: int) -> str:
        """Add a token; return the text that is now certain."""
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids)
        cut = min((i for i in (self.text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
            return self.flush()
        hold = max((n for s in self.stop for n in range(len(s) - 1, 0, -1) if self.text.endswith(s[:n])), default=0)
        if self.text.endswith("\ufffd"):  # a character split across tokens
            hold = max(hold, 1)
        piece = self.text[self.sent:len(self.text) - hold]
        self.sent += len(piece)
        return piece

    def flush(self) -> str:
        piece = self.text[self.sent:]
        self.sent = len(self.text)
        return piece


class TextGenerator:
    """A model and its tokenizer: text in, text out, for the CLI, chat, the web page and evaluation."""

    def __init__(self, model, tokenizer, device="cpu", warn: Callable[[str], None] | None = None):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.sampler = sampler_for(model)
        self.warn = warn or (lambda message: print(f"picolm: {message}", file=sys.stderr))
        self.room_warned = False  # a shortened continuation (a model that writes inside its context) is reported once

    def check(self, options: SamplingOptions) -> None:
        """Refuse the options this model's sampler does not apply."""
        self.sampler.check(options)

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt (text, or ids as they are); an empty one starts a new document (EOS); one
        longer than the context keeps its last tokens, and says so."""
        ids = (self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)) or [self.tokenizer.eos_id]
        limit = self.model.config.block_size - 1
        if len(ids) > limit:
            self.warn(f"the prompt has {len(ids)} tokens, more than the context allows; keeping its last {limit}")
            ids = ids[-limit:]
        return ids

    def _steps(self, prompts: list[str] | list[list[int]], options: SamplingOptions) -> Iterator[torch.Tensor]:
        ids = [self.encode_prompt(p) for p in prompts]
        room = self.sampler.room(self.model, max(len(p) for p in ids), options.max_new_tokens)
        if room < options.max_new_tokens:
            if not self.room_warned:
                self.room_warned = True
                self.warn(f"this model writes inside its context of {self.model.config.block_size} tokens: "
                          f"{room} new tokens after this prompt, not {options.max_new_tokens}")
            options = replace(options, max_new_tokens=room)
        return self.sampler.steps(self.model, ids, options, self.tokenizer.eos_id, self.tokenizer.vocab_size,
                                  self.device)

    def stream(self, prompt: str | list[int], options: SamplingOptions) -> Iterator[str]:
        """The continuation of one prompt, piece by piece as it is generated."""
        text = TextStream(self.tokenizer, options.stop)
        steps = self._steps([prompt], options)
        try:
            for token in steps:
                if token.item() == self.tokenizer.eos_id:
                    break
                piece = text.push(token.item())
                if piece:
                    yield piece
                if text.stopped:
                    return
        finally:
            steps.close()
        rest = text.flush()
        if rest:
            yield rest

    def complete(self, prompts: list[str] | list[list[int]], options: SamplingOptions,
                 batch_size: int = 16) -> list[str]:
        """The continuation of every prompt, decoded batch_size at a time in left-padded batches."""
        return [text for text, _ in self.complete_ended(prompts, options, batch_size)]

    def complete_ended(self, prompts: list[str] | list[list[int]], options: SamplingOptions,
                       batch_size: int = 16) -> list[tuple[str, bool]]:
        """Each continuation and whether the model ended it with EOS (not the token budget or a stop string)."""
        return [row for i in range(0, len(prompts), batch_size)
                for row in self._complete_batch(prompts[i:i + batch_size], options)]

    def _complete_batch(self, prompts: list[str] | list[list[int]], options: SamplingOptions):
        texts = [TextStream(self.tokenizer, options.stop) for _ in prompts]
        finished, ended = [False] * len(prompts), [False] * len(prompts)
        steps = self._steps(prompts, options)
        try:
            for tokens in steps:
                for row, token in enumerate(tokens.tolist()):
                    if finished[row]:
                        continue
                    if token == self.tokenizer.eos_id:
                        finished[row] = ended[row] = True
                        continue
                    texts[row].push(token)
                    finished[row] = texts[row].stopped
                if all(finished):
                    break
        finally:
            steps.close()
        return [(text.text, end) for text, end in zip(texts, ended)]
