"""Sampling from a model: greedy at temperature 0, else temperature with optional top-k and top-p."""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Keep the top-k logits and the smallest set whose probability reaches top_p; the rest become -inf."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def generate(model, prompt: list[int], max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, eos_id: int | None = None, seed: int | None = None,
             device="cpu", vocab_size: int | None = None) -> list[int]:
    """New token ids after `prompt` (the prompt keeps its last block_size tokens), stopping at EOS.

    `vocab_size`: the tokenizer's; a model with a larger (padded) table never emits the unused ids."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    block_size = model.config.block_size
    ids = torch.tensor([prompt[-block_size:]], dtype=torch.long, device=device)
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(ids[:, -block_size:])[:, -1, :vocab_size].float()
        if temperature <= 0:
            token = logits.argmax(-1, keepdim=True)
        else:
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
            token = torch.multinomial(probs, 1, generator=generator)
        token_id = token.item()
        if token_id == eos_id:
            break
        new.append(token_id)
        ids = torch.cat([ids, token], dim=1)
    model.train(was_training)
    return new
