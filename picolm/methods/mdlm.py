"""Masked diffusion (MDLM, Sahoo et al. 2024): the log-linear noise schedule, the continuous-time NELBO and its
perplexity bound, instruction fine-tuning on responses, and the sampler.

Forward process: each token of a clean sequence x0 is replaced by the mask token with probability t
(alpha_t = 1 - t keeps it). The model, bidirectional, predicts every masked token from x_t. The NELBO per
token is E_t [ (1/t) * sum over masked positions of -log p(x0 | x_t) ] / length, so exp(NELBO) bounds the
perplexity from above: comparable to an autoregressive model's perplexity on the same tokens, never below it
for the same model quality.

Instruction data (SFT, as LLaDA fine-tunes): rows are prompt + response + EOS, padded with EOS to the batch's longest
row. The prompt stays clean; the response and the EOS padding after it are noised and scored (the padding teaches
the sampler where a response stops). Evaluation scores the response (its EOS included) alone, padding hidden from
attention, so `val/loss` is a bound on the responses' likelihood whatever the batch.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import torch

from picolm.config import REMASKING, Config, ModelConfig, ObjectiveConfig, SamplingOptions, refuse_failed
from picolm.data.loader import window_batches
from picolm.errors import PicolmError
from picolm.methods.family import Family, Objective
from picolm.methods.noise import antithetic_times
from picolm.methods.sampling import WholeCanvas, filter_logits, gumbel_max, seeded_generator
from picolm.models.masks import padded_positions, padding_mask

BOUND_NOTE = "perplexity (also perplexity_bound) is exp(NELBO per token): an upper bound on the perplexity"
TIMES_PER_ROW = 4  # noise levels each evaluation row is scored at


def mask_positions(x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, L) True where a token is masked: each independently with its row's probability t."""
    return torch.rand(x0.shape, generator=generator, device=x0.device) < t[:, None]


def weighted_nll(model, x0: torch.Tensor, t: torch.Tensor, masked: torch.Tensor):
    """Sum over the batch of -log p(x0 | x_t) / t at the masked positions (the NELBO before dividing by the
    token count), through the fused head (the logits are never materialised); and how many masked tokens the
    model's argmax gets right."""
    x_t = x0.masked_fill(masked, model.config.mask_id)
    at = masked.flatten().nonzero().squeeze(1)
    log_p, hits = model(x_t, x0.flatten()[at], predict_at=at, with_hits=True)
    weights = (1.0 / t)[:, None].expand_as(masked).flatten()[at]
    return -(log_p * weights).sum(), hits.sum()


class MaskedDiffusion(Objective):
    """The continuous-time NELBO per token of the batch's rows under the log-linear schedule; t is drawn
    antithetically across the batch and each noised position is masked with probability t. Text windows are noised
    whole; instruction rows (`collate_canvas`) only after the prompt."""

    def __init__(self, config: ObjectiveConfig):
        self.eps = config.eps

    def loss(self, model, batch: dict[str, torch.Tensor]):
        x0 = batch["input_ids"]
        noised = ~batch["response"].cumsum(1).eq(0) if "response" in batch else torch.ones_like(x0, dtype=torch.bool)
        t = antithetic_times(len(x0), self.eps, device=x0.device)
        masked = mask_positions(x0, t) & noised
        count = noised.sum()
        nll, hits = weighted_nll(model, x0, t, masked)
        loss = nll / count
        masked_count = masked.sum()
        return loss, {"loss": (loss.detach() * count, count), "accuracy": (hits, masked_count)}


@torch.no_grad()
def evaluate_nelbo(model, tokens: np.ndarray, block_size: int, batch_size: int = 16, max_windows: int | None = None,
                   device="cpu", autocast=nullcontext, times_per_window: int = TIMES_PER_ROW, eps: float = 1e-3,
                   seed: int = 0) -> dict[str, float]:
    """NELBO per token, its perplexity bound, and masked-token accuracy over a split's evaluation windows (the AR
    evaluation's windows; their inputs are the rows)."""
    batches = window_batches(tokens, block_size, batch_size, max_windows)
    return MDLMFamily().finish(MDLMFamily.score(model, batches, eps, device, autocast, times_per_window, seed))


def unmask_counts(masked: int, steps: int) -> list[int]:
    """Tokens to reveal at each of `steps` steps so the masked fraction follows t: 1 -> 0 linearly (log-linear
    schedule: alpha_t = 1 - t)."""
    remaining = [masked * (steps - s - 1) // steps for s in range(steps)]
    return [before - after for before, after in zip([masked, *remaining], remaining)]


@torch.inference_mode()
def sample(model, prompts: list[list[int]], length: int, steps: int | None = None, temperature: float = 1.0,
           remasking: str = "none", block_length: int | None = None, vocab_size: int | None = None,
           logits_filter=None, seed: int | None = 0, pad_id: int = 0, device="cpu") -> torch.Tensor:
    """(B, length) tokens after each prompt, denoised from all-masked in `steps` steps (default: one token a
    step). Each step predicts every masked token and keeps as many as the schedule reveals: random ones
    (`none`: no re-masking, MDLM's sampler) or the most confident (`low_confidence`: the rest are re-masked,
    as LLaDA). With `block_length`, blocks are denoised left to right (semi-autoregressive). Revealed tokens
    and the prompts never change."""
    if remasking not in REMASKING:
        raise PicolmError(f"must be one of {', '.join(REMASKING)}", field="--remasking")
    block_length = block_length or length
    blocks = [(start, min(start + block_length, length)) for start in range(0, length, block_length)]
    steps = steps or length
    if steps < len(blocks):
        raise PicolmError(f"needs at least one step per block ({len(blocks)} blocks)", field="--steps")
    mask_id = model.config.mask_id
    was_training = model.training
    model.eval()
    generator = seeded_generator(seed, device)
    width = max(len(p) for p in prompts)
    pad = torch.tensor([width - len(p) for p in prompts], device=device)
    x = torch.tensor([[pad_id] * (width - len(p)) + list(p) + [mask_id] * length for p in prompts], device=device)
    positions = attn_mask = None
    if bool(pad.any()):  # left padding: positions count from each row's first token; padding is never seen
        real = torch.arange(x.shape[1], device=device) >= pad[:, None]
        positions, attn_mask = padded_positions(real), padding_mask(real, causal=False)
    try:
        for b, (start, end) in enumerate(blocks):
            block_steps = steps // len(blocks) + (b < steps % len(blocks))
            for count in unmask_counts(end - start, min(block_steps, end - start)):
                # the head has no mask row, so mask_id is never proposed; ids past the tokenizer's are dropped
                logits = model(x, positions=positions, attn_mask=attn_mask)[:, width:, :vocab_size].float()
                if temperature > 0:
                    logits = logits / temperature
                if logits_filter is not None:
                    logits = logits_filter(logits)
                proposal = logits.argmax(-1) if temperature == 0 else gumbel_max(logits, generator)
                canvas = x[:, width:]
                open_now = canvas == mask_id
                open_now[:, end:] = False
                if remasking == "low_confidence":
                    score = logits.softmax(-1).gather(-1, proposal[..., None]).squeeze(-1).double()
                else:
                    score = torch.rand(canvas.shape, dtype=torch.float64, generator=generator, device=device)
                chosen = score.masked_fill(~open_now, -1.0).topk(count, dim=-1).indices
                canvas.scatter_(1, chosen, proposal.gather(1, chosen))
    finally:
        model.train(was_training)
    return x[:, width:]


class MaskedDiffusionSampler(WholeCanvas):
    """Denoise an all-masked continuation (`sample`), cut at its first EOS."""

    reads = ("steps", "remasking", "block_length")
    refusal = "a masked-diffusion model writes all its tokens together"

    def denoise(self, model, prompts, length: int, options: SamplingOptions, eos_id, vocab_size, device):
        rows = sample(model, prompts, length, options.steps, options.temperature, options.remasking,
                      options.block_length, vocab_size,
                      lambda logits: filter_logits(logits, options.top_k, options.top_p), options.seed,
                      pad_id=eos_id or 0, device=device).tolist()
        return [row[:row.index(eos_id)] if eos_id in row else row for row in rows]


class MDLMFamily(Family):
    kind = "mdlm"
    title = "masked diffusion"
    tasks = ("text", "sft")
    settings = ("eps",)
    sets = ("mask_id",)
    causal = False
    predicts_next = False
    label = "mdlm"
    evaluations = ("perplexity", "accuracy", "generation", "format", "speed")
    aliases = {"perplexity": "perplexity_bound", "accuracy": "masked_accuracy"}
    note = BOUND_NOTE
    sampler = MaskedDiffusionSampler()

    def claims(self, model: ModelConfig) -> bool:
        return model.mask_id >= 0

    def starts_from(self, model: ModelConfig) -> bool:
        return self.claims(model)

    def check(self, config: Config, fresh: bool = True) -> list[str]:
        m, o = config.model, config.objective
        super().check(config, fresh)
        checks = [
            (m.attention != "linear", "model.attention",
             "linear attention is built in its causal (chunked and recurrent) form; masked diffusion needs softmax"),
            (not config.train.hf_model, "train.hf_model", "a Hugging Face causal LM cannot be a masked-diffusion "
                                                          "backbone"),
            (0.0 < o.eps < 1.0, "objective.eps", "must be in (0, 1)"),
        ]
        refuse_failed(checks)
        if m.position == "learned":
            return ["with learned positions a bidirectional model is slow to use its neighbours (on numeric data it "
                    "stayed at the unigram level for 1,500 steps); model.position rope learns from the start"]
        return []

    def vocabulary(self, model: ModelConfig, tokenizer, objective: ObjectiveConfig) -> ModelConfig:
        """One id after the tokenizer's, the last of the vocabulary, is the mask (the tokenizer's own `<|mask|>`
        stays an ordinary token, so any tokenizer works); the head never predicts it."""
        size = self._vocab_size(model, tokenizer.vocab_size, extra=1, what=" plus the mask token")
        return replace(model, vocab_size=size, mask_id=size - 1)

    def objective(self, config: Config, tokenizer, task: str) -> Objective:
        return MaskedDiffusion(config.objective)

    def evaluate(self, model, batches, objective: MaskedDiffusion, device="cpu", autocast=nullcontext,
                 kind_names=None) -> dict[str, float]:
        metrics = self.score(model, batches, objective.eps, device, autocast)
        metrics.pop("tokens")
        return self.finish(metrics)

    @classmethod
    @torch.no_grad()
    def score(cls, model, batches, eps: float, device="cpu", autocast=nullcontext, times: int = TIMES_PER_ROW,
              seed: int = 0) -> dict[str, float]:
        """The NELBO per scored token, each row at `times` stratified noise levels from a fixed seed (two
        evaluations of one model agree exactly; the training RNG is untouched). Text windows are scored whole;
        instruction rows on their response, padding hidden from attention."""
        was_training = model.training
        model.eval()
        generator = torch.Generator(device=device).manual_seed(seed)
        nll_sum, correct, masked_count, count = 0.0, 0, 0, 0
        try:
            for batch in batches:
                rows = batch["input_ids"].to(device)
                scored = batch["response"].to(device) if "response" in batch else torch.ones_like(rows,
                                                                                                  dtype=torch.bool)
                visible = padding_mask(batch["real"].to(device), causal=False) if "real" in batch else None
                x0 = rows.repeat(times, 1)
                t = antithetic_times(len(x0), eps, generator, device)
                masked = mask_positions(x0, t, generator) & scored.repeat(times, 1)
                for part in range(0, len(x0), len(rows)):  # a noise level per row at a time: the AR evaluation's memory
                    x, m = x0[part:part + len(rows)], masked[part:part + len(rows)]
                    with autocast():
                        logits = model(x.masked_fill(m, model.config.mask_id), attn_mask=visible).float()
                    log_p = logits.log_softmax(-1).gather(-1, x[..., None]).squeeze(-1)
                    nll_sum += float(-(log_p * m / t[part:part + len(rows), None]).sum())
                    correct += int(((logits.argmax(-1) == x) & m).sum())
                masked_count += int(masked.sum())
                count += int(scored.sum()) * times
        finally:
            model.train(was_training)
        return {"loss": nll_sum / max(count, 1), "accuracy": correct / max(masked_count, 1), "tokens": count // times}
