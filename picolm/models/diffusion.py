"""Masked diffusion (MDLM, Sahoo et al. 2024): the log-linear noise schedule, the continuous-time NELBO, its
perplexity bound, and the sampler.

Forward process: each token of a clean sequence x0 is replaced by the mask token with probability t
(alpha_t = 1 - t keeps it). The model, bidirectional, predicts every masked token from x_t. The NELBO per
token is E_t [ (1/t) * sum over masked positions of -log p(x0 | x_t) ] / length, so exp(NELBO) bounds the
perplexity from above: comparable to an autoregressive model's perplexity on the same tokens, never below it
for the same model quality.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch

from picolm.data.loader import eval_windows
from picolm.errors import PicolmError

REMASKING = ("none", "low_confidence")


def is_diffusion(model) -> bool:
    """A masked-diffusion (MDLM) model: it has a mask token."""
    return getattr(model.config, "mask_id", -1) >= 0


def is_denoiser(model) -> bool:
    """A model that writes its whole continuation at once by denoising (MDLM or SDD), never left to right."""
    return is_diffusion(model) or getattr(model.config, "arch", None) == "sdd"


def antithetic_times(batch_size: int, eps: float, generator: torch.Generator | None = None,
                     device=None) -> torch.Tensor:
    """(B,) noise levels t_i = (u + i/B) mod 1 for one uniform u, mapped into [eps, 1]: stratified across the
    batch, so the loss's variance over t shrinks."""
    u = torch.rand((), generator=generator, device=device)
    return eps + (1 - eps) * ((u + torch.arange(batch_size, device=device) / batch_size) % 1)


def mask_positions(x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, L) True where a token is masked: each independently with its row's probability t."""
    return torch.rand(x0.shape, generator=generator, device=x0.device) < t[:, None]


def weighted_nll(model, x0: torch.Tensor, t: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of -log p(x0 | x_t) / t at the masked positions (the NELBO before dividing by the
    token count), through the fused head (the logits are never materialised)."""
    x_t = x0.masked_fill(masked, model.config.mask_id)
    at = masked.flatten().nonzero().squeeze(1)
    log_p = model(x_t, x0.flatten()[at], predict_at=at)
    weights = (1.0 / t)[:, None].expand_as(masked).flatten()[at]
    return -(log_p * weights).sum()


@torch.no_grad()
def evaluate_nelbo(model, tokens: np.ndarray, block_size: int, batch_size: int = 16, max_windows: int | None = None,
                   device="cpu", autocast=nullcontext, times_per_window: int = 4, eps: float = 1e-3,
                   seed: int = 0) -> dict[str, float]:
    """NELBO per token, its perplexity bound, and masked-token accuracy over evaluation windows. Each window is
    scored at `times_per_window` noise levels, stratified over [eps, 1]; t and the masks come from a fixed seed,
    so two evaluations of one model agree exactly."""
    starts = eval_windows(tokens, block_size, max_windows)  # the AR evaluation's windows, less their last token
    if not starts:
        raise PicolmError(f"only {len(tokens)} tokens: fewer than one window of block_size = {block_size}",
                          field="evaluation")
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    nll_sum, correct, masked_count, count = 0.0, 0, 0, 0
    for b in range(0, len(starts), batch_size):
        rows = np.stack([np.asarray(tokens[s:s + block_size], dtype=np.int64) for s in starts[b:b + batch_size]])
        x0 = torch.from_numpy(rows).to(device).repeat(times_per_window, 1)
        t = antithetic_times(len(x0), eps, generator, device)
        masked = mask_positions(x0, t, generator)
        for part in range(0, len(x0), len(rows)):  # one noise level per window at a time: the AR evaluation's memory
            x, m, w = x0[part:part + len(rows)], masked[part:part + len(rows)], 1.0 / t[part:part + len(rows), None]
            with autocast():
                logits = model(x.masked_fill(m, model.config.mask_id)).float()
            log_p = logits.log_softmax(-1).gather(-1, x[..., None]).squeeze(-1)
            nll_sum += float(-(log_p * m * w).sum())
            correct += int(((logits.argmax(-1) == x) & m).sum())
        masked_count += int(masked.sum())
        count += x0.numel()
    model.train(was_training)
    loss = nll_sum / count
    return {"loss": loss, "perplexity_bound": math.exp(min(loss, 50.0)),
            "masked_accuracy": correct / max(masked_count, 1), "tokens": count // times_per_window}


def gumbel_max(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A sample of softmax(logits) at every position at once, as argmax(logits + Gumbel noise) in float64: float32
    noise truncates the Gumbel tail, which measurably lowers the diversity of masked-diffusion samples (Zheng et
    al. 2024, "Masked diffusion models are secretly time-agnostic masked models")."""
    u = torch.rand(logits.shape, dtype=torch.float64, generator=generator, device=logits.device)
    gumbel = -torch.log(-torch.log(u.clamp(min=torch.finfo(torch.float64).tiny)))
    return (logits.double() + gumbel).argmax(-1)


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
    generator = torch.Generator(device=device)
    generator.manual_seed(seed) if seed is not None else generator.seed()
    width = max(len(p) for p in prompts)
    pad = torch.tensor([width - len(p) for p in prompts], device=device)
    x = torch.tensor([[pad_id] * (width - len(p)) + list(p) + [mask_id] * length for p in prompts], device=device)
    positions = attn_mask = None
    if bool(pad.any()):  # left padding: positions count from each row's first token; padding is never seen
        columns = torch.arange(x.shape[1], device=device)
        positions = (columns - pad[:, None]).clamp(min=0)
        attn_mask = (columns[None, :] >= pad[:, None])[:, None, None, :]
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
