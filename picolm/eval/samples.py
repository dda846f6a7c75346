"""Sample continuations of held-out document openings, for a run's samples.txt."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from picolm.config import SamplingOptions
from picolm.generate import TextGenerator


def document_openings(tokens: np.ndarray, eos_id: int, count: int, prompt_tokens: int) -> list[list[int]]:
    """The first `prompt_tokens` tokens of the first `count` documents that are long enough."""
    openings, start = [], 0
    if count <= 0:
        return openings
    for end in np.flatnonzero(np.asarray(tokens[: 200_000]) == eos_id):
        if end - start > prompt_tokens:
            openings.append([int(t) for t in tokens[start:start + prompt_tokens]])
            if len(openings) == count:
                break
        start = end + 1
    return openings


def write_samples(model, tokenizer, prompts: list[list[int]], path: str | Path, max_new_tokens: int = 64,
                  temperature: float = 0.8, top_k: int = 50, seed: int = 0, device="cpu") -> list[str]:
    """Write a prompt -> sample pair for each prompt; returns them. A model that writes inside its context (a
    diffusion model) fills at most the rest of it."""
    generator = TextGenerator(model, tokenizer, device)
    if prompts:
        max_new_tokens = generator.sampler.room(model, max(len(p) for p in prompts), max_new_tokens)
    options = SamplingOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
    texts = generator.complete(prompts, options)
    samples = [f"[prompt] {tokenizer.decode(prompt)}\n[sample] {text}\n" for prompt, text in zip(prompts, texts)]
    Path(path).write_text("\n".join(samples), encoding="utf-8")
    return samples
