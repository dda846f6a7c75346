"""Positions and attention masks for left-padded rows: each row counts its positions from its own first token and
never attends to padding, so a padded batch computes what each row computes alone."""

from __future__ import annotations

import torch


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
