"""Noise levels shared by the diffusion families."""

from __future__ import annotations

import torch


def antithetic_times(batch_size: int, eps: float, generator: torch.Generator | None = None,
                     device=None) -> torch.Tensor:
    """(B,) noise levels t_i = (u + i/B) mod 1 for one uniform u, mapped into [eps, 1]: stratified across the
    batch, so the loss's variance over t shrinks."""
    u = torch.rand((), generator=generator, device=device)
    return eps + (1 - eps) * ((u + torch.arange(batch_size, device=device) / batch_size) % 1)
