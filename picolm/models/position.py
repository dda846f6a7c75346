"""Position kinds: learned absolute embeddings, rotary (RoPE) on queries and keys, or none."""

from __future__ import annotations

import torch
from torch import nn

from picolm.config import ModelConfig


class NoPosition(nn.Module):
    """No positional signal: a causal mask alone tells tokens apart by what they can see."""

    def input_embedding(self, positions: torch.Tensor) -> torch.Tensor | None:
        return None

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None


class LearnedPosition(NoPosition):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.wpe = nn.Embedding(config.block_size, config.n_embd)

    def input_embedding(self, positions: torch.Tensor) -> torch.Tensor:
        return self.wpe(positions)


class RotaryPosition(NoPosition):
    """RoPE (Su et al. 2021) in the half-split layout used by GPT-NeoX and Llama."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        head_size = config.n_embd // config.n_head
        inv_freq = 1.0 / (config.rope_base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, D) angles for positions (T,); (B, 1, T, D) for per-row positions (B, T)."""
        angles = positions.float()[..., None] * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        if angles.dim() == 3:
            angles = angles[:, None]
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) queries or keys by (T, D) or (B, 1, T, D) angles."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


POSITIONS = {"none": NoPosition, "learned": LearnedPosition, "rope": RotaryPosition}


def build_position(config: ModelConfig) -> NoPosition:
    kind = POSITIONS[config.position]
    return kind() if kind is NoPosition else kind(config)
