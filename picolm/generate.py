"""Decoding for every model: prompts in a batch (left-padded), a KV cache where the model has one, greedy or
sampled tokens (temperature, top-k, top-p, repetition penalty), EOS and stop strings, and streaming.

`decode_steps` is the token loop; `TextGenerator` puts a tokenizer around it for the CLI, chat, the web page
and evaluation. A model with `new_cache` / `decode` (see `GPT`) decodes one token per step against its cache;
any other model with `forward(idx, positions=, attn_mask=) -> logits` recomputes the context every step.
A denoising model (`is_denoiser`: masked diffusion or SDD) is sent to its sampler instead (`generate_ids`),
which writes the whole continuation at once in `steps` denoising steps.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from picolm.errors import PicolmError
from picolm.models.diffusion import REMASKING, is_denoiser, sample
from picolm.models.sdd import is_sdd, sdd_generate_ids


@dataclass
class SamplingOptions:
    max_new_tokens: int = 100
    temperature: float = 0.8  # 0: greedy
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set of tokens whose probability reaches p (nucleus)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or the output (CTRL)
    stop: tuple[str, ...] = ()  # stop before any of these strings
    seed: int | None = 0  # None: a different sample every time
    steps: int | None = None  # diffusion: denoising steps (default: one per new token)
    remasking: str = "none"  # diffusion: none (revealed at random) | low_confidence (the most confident first)
    block_length: int | None = None  # diffusion: denoise blocks of this many tokens left to right

    def validate(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens", "must be at least 1"),
            (self.temperature >= 0, "temperature", "must be 0 (greedy) or positive"),
            (self.top_k is None or self.top_k >= 1, "top_k", "must be at least 1"),
            (self.top_p is None or 0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty", "must be positive"),
            (all(self.stop), "stop", "stop strings must not be empty"),
            (self.steps is None or self.steps >= 1, "steps", "must be at least 1"),
            (self.remasking in REMASKING, "remasking", f"must be one of {', '.join(REMASKING)}"),
            (self.block_length is None or self.block_length >= 1, "block_length", "must be at least 1"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise PicolmError(f"{why} (got {getattr(self, name)!r})", field="--" + name.replace("_", "-"))

    def check_model(self, model) -> None:
        """Refuse the options that the model's way of decoding has no use for, before any decoding."""
        if is_denoiser(model):
            if self.repetition_penalty != 1.0:
                raise PicolmError("a diffusion model writes all its tokens together: there is no earlier output "
                                  "to penalize", field="--repetition-penalty")
            for name, default in (("remasking", "none"), ("block_length", None)):
                if is_sdd(model) and getattr(self, name) != default:
                    raise PicolmError("applies to masked-diffusion models only; an sdd model's sampler is "
                                      "deterministic", field="--" + name.replace("_", "-"))
            return
        for name, default in (("steps", None), ("remasking", "none"), ("block_length", None)):
            if getattr(self, name) != default:
                raise PicolmError("applies to masked-diffusion models only; this model decodes left to right",
                                  field="--" + name.replace("_", "-"))


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Keep the top-k logits and the smallest set whose probability reaches top_p; the rest become -inf."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019), as transformers applies it: the logits of tokens already
    seen are divided by the penalty where positive and multiplied by it where negative."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def next_tokens(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator | None) -> torch.Tensor:
    """(B,) tokens from (B, V) float logits: argmax at temperature 0, else a sample from the filtered softmax."""
    if options.temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits / options.temperature, options.top_k, options.top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def padded_positions(real: torch.Tensor, start: int = 0) -> torch.Tensor:
    """(B, S - start) positions of columns start..S-1 of rows whose real tokens are True in `real` (B, S): each
    row counts its own real tokens from 0, and padding sits at 0."""
    return (real.long().cumsum(-1) - 1)[:, start:].clamp(min=0)


def padding_mask(real: torch.Tensor, start: int = 0, causal: bool = True) -> torch.Tensor:
    """(B, 1, S - start, S), True where a query may attend: queries start..S-1 see the real keys (`real` (B, S))
    up to themselves, or all of them when not causal; a padding query sees itself, so no row is empty."""
    keys = torch.arange(real.shape[1], device=real.device)
    queries = torch.arange(start, real.shape[1], device=real.device)[:, None]
    seen = real[:, None, :] & (keys <= queries) if causal else real[:, None, :]
    return (seen | (keys == queries))[:, None]


class _Batch:
    """Left-padded token rows: the positions each row counts from its own first token, and which columns are
    real tokens (padding is never attended to)."""

    def __init__(self, prompts: list[list[int]], pad_id: int, device):
        width = max(len(p) for p in prompts)
        self.pad = torch.tensor([width - len(p) for p in prompts], device=device)
        self.tokens = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
        self.padded = bool(self.pad.any())

    def _real(self, end: int) -> torch.Tensor:
        return torch.arange(end, device=self.pad.device) >= self.pad[:, None]

    def positions(self, start: int, end: int) -> torch.Tensor | None:
        return padded_positions(self._real(end), start) if self.padded else None

    def mask(self, start: int, end: int) -> torch.Tensor | None:
        """(B, 1, end - start, end), or None when no row is padded."""
        return padding_mask(self._real(end), start) if self.padded else None

    def drop_front(self, n: int) -> None:
        """Forget the first n columns (the context window slides)."""
        self.tokens = self.tokens[:, n:]
        self.pad = (self.pad - n).clamp(min=0)
        self.padded = bool(self.pad.any())


@torch.inference_mode()
def decode_steps(model, prompts: list[list[int]], options: SamplingOptions, eos_id: int | None = None,
                 vocab_size: int | None = None, device="cpu", pad_id: int = 0) -> Iterator[torch.Tensor]:
    """Yield the (B,) next tokens of every prompt, step by step, until every row has emitted EOS or
    max_new_tokens are done; a finished row yields eos_id from then on. Close the iterator to stop early.

    Prompts must be non-empty and fit the context. When the context fills, the window slides: the cache
    restarts from the last half of it."""
    options.validate()
    if is_denoiser(model):
        raise PicolmError("a diffusion model has no KV cache and does not decode left to right; use generate_ids",
                          field="model")
    options.check_model(model)
    block_size = model.config.block_size
    if any(not p or len(p) > block_size for p in prompts):
        raise PicolmError(f"every prompt needs 1 to {block_size} tokens", field="prompt")
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device)
    generator.manual_seed(options.seed) if options.seed is not None else generator.seed()
    batch = _Batch(prompts, pad_id, device)
    cached = hasattr(model, "new_cache")
    seen = None
    if options.repetition_penalty != 1.0:
        seen = torch.zeros(len(prompts), model.config.vocab_size, dtype=torch.bool, device=device)
        seen.scatter_(1, batch.tokens, True)
        seen[:, pad_id] &= torch.tensor([pad_id in p for p in prompts], device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    cache, fed = None, 0  # fed: how many columns of batch.tokens the cache holds
    try:
        for _ in range(options.max_new_tokens):
            width = batch.tokens.shape[1]
            if cached:
                if cache is None or width > block_size:  # the first step, or the cache is full
                    if width > block_size:
                        batch.drop_front(width - block_size // 2)
                        width = batch.tokens.shape[1]
                    cache, fed = model.new_cache(len(prompts)), 0
                logits = model.decode(batch.tokens[:, fed:], cache, positions=batch.positions(fed, width),
                                      attn_mask=batch.mask(fed, width))
                fed = width
            else:
                if width > block_size:
                    batch.drop_front(width - block_size)
                    width = block_size
                logits = model(batch.tokens, positions=batch.positions(0, width),
                               attn_mask=batch.mask(0, width))[:, -1]
            logits = logits[:, :vocab_size].float()
            if seen is not None:
                logits = penalize_repeats(logits, seen[:, :logits.shape[1]], options.repetition_penalty)
            token = next_tokens(logits, options, generator)
            if eos_id is not None:
                token = token.masked_fill(done, eos_id)
                done |= token == eos_id
            if seen is not None:
                seen.scatter_(1, token[:, None], True)
            batch.tokens = torch.cat([batch.tokens, token[:, None]], dim=1)
            yield token
            if bool(done.all()):
                break
    finally:
        model.train(was_training)


def generate_ids(model, prompts: list[list[int]], options: SamplingOptions, eos_id: int | None = None,
                 vocab_size: int | None = None, device="cpu") -> list[list[int]]:
    """The new token ids of every prompt, without the EOS that ended it."""
    if is_denoiser(model):
        return denoise_ids(model, prompts, options, eos_id, vocab_size, device)
    steps = list(decode_steps(model, prompts, options, eos_id, vocab_size, device, pad_id=eos_id or 0))
    if not steps:
        return [[] for _ in prompts]
    rows = torch.stack(steps, dim=1).tolist()
    return [row[:row.index(eos_id)] if eos_id in row else row for row in rows]


def denoise_ids(model, prompts: list[list[int]], options: SamplingOptions, eos_id: int | None = None,
                vocab_size: int | None = None, device="cpu") -> list[list[int]]:
    """A masked-diffusion model's continuation of every prompt (as long as the context leaves room for, up to
    max_new_tokens), cut before its first EOS. No KV cache: every step reads the whole canvas both ways."""
    options.validate()
    options.check_model(model)
    room = model.config.block_size - max(len(p) for p in prompts)
    if any(not p for p in prompts) or room < 1:
        raise PicolmError(f"every prompt needs 1 to {model.config.block_size - 1} tokens", field="prompt")
    if is_sdd(model):  # sparse distribution diffusion: its own deterministic sampler
        return sdd_generate_ids(model, prompts, options, eos_id, vocab_size, device)
    rows = sample(model, prompts, min(options.max_new_tokens, room), options.steps, options.temperature,
                  options.remasking, options.block_length, vocab_size,
                  lambda logits: filter_logits(logits, options.top_k, options.top_p), options.seed,
                  pad_id=eos_id or 0, device=device).tolist()
    return [row[:row.index(eos_id)] if eos_id in row else row for row in rows]


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
        self.warn = warn or (lambda message: print(f"picolm: {message}", file=sys.stderr))
        self.room_warned = False  # a diffusion model's shortened continuations are reported once

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
        return decode_steps(self.model, [self.encode_prompt(p) for p in prompts], options, self.tokenizer.eos_id,
                            self.tokenizer.vocab_size, self.device, pad_id=self.tokenizer.eos_id)

    def stream(self, prompt: str | list[int], options: SamplingOptions) -> Iterator[str]:
        """The continuation of one prompt, piece by piece as it is generated (a diffusion model's in one piece)."""
        if is_denoiser(self.model):
            yield from filter(None, self._denoise_batch([prompt], options))
            return
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
        return [text for i in range(0, len(prompts), batch_size)
                for text in self._complete_batch(prompts[i:i + batch_size], options)]

    def _complete_batch(self, prompts: list[str] | list[list[int]], options: SamplingOptions) -> list[str]:
        if is_denoiser(self.model):
            return self._denoise_batch(prompts, options)
        texts = [TextStream(self.tokenizer, options.stop) for _ in prompts]
        finished = [False] * len(prompts)
        steps = self._steps(prompts, options)
        try:
            for tokens in steps:
                for row, token in enumerate(tokens.tolist()):
                    if finished[row]:
                        continue
                    if token == self.tokenizer.eos_id:
                        finished[row] = True
                        continue
                    texts[row].push(token)
                    finished[row] = texts[row].stopped
                if all(finished):
                    break
        finally:
            steps.close()
        return [text.text for text in texts]

    def _denoise_batch(self, prompts: list[str] | list[list[int]], options: SamplingOptions) -> list[str]:
        """A diffusion model's continuations, written inside the context: fewer tokens than asked when the prompt
        leaves less room, and it says so (once)."""
        ids = [self.encode_prompt(p) for p in prompts]
        room = self.model.config.block_size - max(len(p) for p in ids)
        if options.max_new_tokens > room and not self.room_warned:
            self.room_warned = True
            self.warn(f"a diffusion model writes inside its context of {self.model.config.block_size} tokens: "
                      f"{room} new tokens after this prompt, not {options.max_new_tokens}")
        rows = denoise_ids(self.model, ids, replace(options, max_new_tokens=min(options.max_new_tokens, room)),
                           self.tokenizer.eos_id, self.tokenizer.vocab_size, self.device)
        texts = []
        for row in rows:
            text = TextStream(self.tokenizer, options.stop)
            for token in row:
                text.push(token)
                if text.stopped:
                    break
            texts.append(text.text)
        return texts
