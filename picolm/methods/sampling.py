"""Sampling: the options every verb shares, the logit filters, and the samplers families hand out.

A `Sampler` yields the next token of every prompt step by step (`steps`), which is all `picolm.generate` needs for
text, streaming and stop strings. `LeftToRight` (every next-token family) decodes one token at a time against a
KV cache; `WholeCanvas` (the diffusion families) denoises every new token together and then hands them out in order.
A sampler refuses the options it does not read (`check`), before anything decodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

from picolm.config import COMMON_SAMPLING, SamplingOptions, flag
from picolm.errors import PicolmError
from picolm.models.masks import padded_positions, padding_mask


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


def gumbel_noise(shape, generator: torch.Generator, device) -> torch.Tensor:
    """Gumbel(0, 1) noise in float64: float32 noise truncates the Gumbel tail, which measurably lowers the diversity
    of diffusion samples (Zheng et al. 2024, "Masked diffusion models are secretly time-agnostic masked models")."""
    u = torch.rand(shape, dtype=torch.float64, generator=generator, device=device)
    return -torch.log(-torch.log(u.clamp(min=torch.finfo(torch.float64).tiny)))


def gumbel_max(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A sample of softmax(logits) at every position at once, as argmax(logits + Gumbel noise), in float64."""
    return (logits.double() + gumbel_noise(logits.shape, generator, logits.device)).argmax(-1)


def seeded_generator(seed: int | None, device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed) if seed is not None else generator.seed()
    return generator


class Sampler:
    """How a family's models write text: the next token of every prompt, step by step."""

    reads: tuple[str, ...] = ()  # the options it reads besides the common ones
    refusal: str = ""  # why the other options do not apply to it

    def check(self, options: SamplingOptions) -> None:
        """Refuse, naming the option, what this sampler would not apply."""
        options.validate()
        defaults = SamplingOptions()
        for f in dataclasses.fields(SamplingOptions):
            if f.name not in COMMON_SAMPLING + self.reads and getattr(options, f.name) != getattr(defaults, f.name):
                raise PicolmError(f"applies to {f.metadata['applies']} only; {self.refusal}", field=flag(f.name))

    def room(self, model, prompt_length: int, wanted: int) -> int:
        """How many of `wanted` new tokens this sampler writes after a prompt of this length."""
        return wanted

    def settings(self, options: SamplingOptions) -> dict[str, object]:
        """What, besides the batch and the length, sets this sampler's speed (reported beside it)."""
        return {}

    def steps(self, model, prompts: list[list[int]], options: SamplingOptions, eos_id: int | None = None,
              vocab_size: int | None = None, device="cpu") -> Iterator[torch.Tensor]:
        """Yield the (B,) next tokens of every prompt until every row has emitted EOS or max_new_tokens are done;
        a finished row yields eos_id from then on. Close the iterator to stop early."""
        raise NotImplementedError

    def generate_ids(self, model, prompts: list[list[int]], options: SamplingOptions, eos_id: int | None = None,
                     vocab_size: int | None = None, device="cpu") -> list[list[int]]:
        """The new token ids of every prompt, without the EOS that ended it."""
        steps = list(self.steps(model, prompts, options, eos_id, vocab_size, device))
        if not steps:
            return [[] for _ in prompts]
        rows = torch.stack(steps, dim=1).tolist()
        return [row[:row.index(eos_id)] if eos_id in row else row for row in rows]


class _Batch:
    """Left-padded token rows: the positions each row counts from its own first token, and which columns are
    real tokens (padding is never attended to). New tokens are kept aside and joined only when the whole rows are
    read (a refill of the cache), not at every step."""

    def __init__(self, prompts: list[list[int]], pad_id: int, block_size: int, device):
        width = max(len(p) for p in prompts)
        self.block_size = block_size
        self.pad = torch.tensor([width - len(p) for p in prompts], device=device)
        self._tokens = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
        self.new: list[torch.Tensor] = []
        self.width = width
        self._set_padding()

    def _set_padding(self) -> None:
        self.padded = bool(self.pad.any())
        self.real = self._real(self.block_size) if self.padded else None  # (B, block_size) the visible columns

    @property
    def tokens(self) -> torch.Tensor:
        if self.new:
            self._tokens = torch.cat([self._tokens, torch.stack(self.new, dim=1)], dim=1)
            self.new = []
        return self._tokens

    def append(self, token: torch.Tensor) -> None:
        self.new.append(token)
        self.width += 1

    def _real(self, end: int) -> torch.Tensor:
        return torch.arange(end, device=self.pad.device) >= self.pad[:, None]

    def positions(self, start: int, end: int) -> torch.Tensor | None:
        return padded_positions(self._real(end), start) if self.padded else None

    def mask(self, start: int, end: int) -> torch.Tensor | None:
        """(B, 1, end - start, end), or None when no row is padded."""
        return padding_mask(self._real(end), start) if self.padded else None

    def last_positions(self) -> torch.Tensor | None:
        """(B,) the position of each row's last token, or None when no row is padded (all at width - 1)."""
        return self.width - 1 - self.pad if self.padded else None

    def drop_front(self, n: int) -> None:
        """Forget the first n columns (the context window slides)."""
        self._tokens = self.tokens[:, n:]
        self.width -= n
        self.pad = (self.pad - n).clamp(min=0)
        self._set_padding()


class LeftToRight(Sampler):
    """Next-token decoding: prompts in a left-padded batch, a KV cache where the model has one (`new_cache`, then
    `decode` for the prompts and `step` for each new token), greedy or sampled tokens (temperature, top-k, top-p,
    repetition penalty), EOS. Any other model with `forward(idx, positions=, attn_mask=) -> logits` recomputes the
    context every step. When the context fills, the window slides: the cache restarts from the last half of it.
    Each step runs only the operations its options need: at batch 1 on a CPU each costs about as much as a
    token's matrix products."""

    reads = ("repetition_penalty",)
    refusal = "this model decodes left to right"

    @torch.inference_mode()
    def steps(self, model, prompts: list[list[int]], options: SamplingOptions, eos_id: int | None = None,
              vocab_size: int | None = None, device="cpu") -> Iterator[torch.Tensor]:
        self.check(options)
        block_size = model.config.block_size
        if any(not p or len(p) > block_size for p in prompts):
            raise PicolmError(f"every prompt needs 1 to {block_size} tokens", field="prompt")
        was_training = model.training
        model.eval()
        generator = seeded_generator(options.seed, device)
        pad_id = eos_id or 0
        batch = _Batch(prompts, pad_id, block_size, device)
        cached = hasattr(model, "new_cache")
        seen = None
        if options.repetition_penalty != 1.0:
            seen = torch.zeros(len(prompts), model.config.vocab_size, dtype=torch.bool, device=device)
            seen.scatter_(1, batch.tokens, True)
            seen[:, pad_id] &= torch.tensor([pad_id in p for p in prompts], device=device)
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        any_done = False
        cache, token = None, None
        try:
            for _ in range(options.max_new_tokens):
                if batch.width > block_size:  # the context is full: slide the window
                    batch.drop_front(batch.width - (block_size // 2 if cached else block_size))
                    cache = None
                width = batch.width
                if not cached:
                    logits = model(batch.tokens, positions=batch.positions(0, width),
                                   attn_mask=batch.mask(0, width))[:, -1]
                elif cache is None:  # the prompts, or what is left of the rows after a slide
                    cache = model.new_cache(len(prompts))
                    logits = model.decode(batch.tokens, cache, positions=batch.positions(0, width),
                                          attn_mask=batch.mask(0, width))
                else:
                    logits = model.step(token, cache, batch.last_positions(), batch.real)
                if vocab_size is not None and vocab_size < logits.shape[1]:
                    logits = logits[:, :vocab_size]
                if logits.dtype != torch.float32:
                    logits = logits.float()
                if seen is not None:
                    logits = penalize_repeats(logits, seen[:, :logits.shape[1]], options.repetition_penalty)
                token = next_tokens(logits, options, generator)
                if eos_id is not None:
                    if any_done:
                        token = token.masked_fill(done, eos_id)
                    ended = token == eos_id
                    if bool(ended.any()):
                        done |= ended
                        any_done = True
                if seen is not None:
                    seen.scatter_(1, token[:, None], True)
                batch.append(token)
                yield token
                if any_done and bool(done.all()):
                    break
        finally:
            model.train(was_training)


class WholeCanvas(Sampler):
    """Samplers of models that write every new token together inside their context (no KV cache, no sliding
    window): `denoise` makes the rows, which `steps` then hands out a column at a time."""

    def room(self, model, prompt_length: int, wanted: int) -> int:
        return max(0, min(wanted, model.config.block_size - prompt_length))

    def settings(self, options: SamplingOptions) -> dict[str, object]:
        return {"denoising_steps": options.steps or options.max_new_tokens}

    def denoise(self, model, prompts: list[list[int]], length: int, options: SamplingOptions, eos_id: int | None,
                vocab_size: int | None, device) -> list[list[int]]:
        """`length` new tokens after every prompt (each row may end earlier, at its EOS, which is left out)."""
        raise NotImplementedError

    def steps(self, model, prompts: list[list[int]], options: SamplingOptions, eos_id: int | None = None,
              vocab_size: int | None = None, device="cpu") -> Iterator[torch.Tensor]:
        self.check(options)
        length = self.room(model, max(len(p) for p in prompts), options.max_new_tokens)
        if any(not p for p in prompts) or length < 1:
            raise PicolmError(f"every prompt needs 1 to {model.config.block_size - 1} tokens", field="prompt")
        rows = self.denoise(model, prompts, length, options, eos_id, vocab_size, device)
        end = eos_id if eos_id is not None else -1
        columns = torch.tensor([row + [end] * (length - len(row)) for row in rows], device=device)
        for column in columns.T:
            yield column
            if eos_id is not None and bool((column == eos_id).all()):
                break
