"""Attention kinds. Softmax attention runs through `scaled_dot_product_attention` (flash kernels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from picolm.config import ModelConfig
from picolm.models.position import apply_rotary


class SoftmaxAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.causal = config.causal
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`attn_mask` (B, 1, T, T), True where a query may attend, replaces the causal mask when given."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=self.causal and attn_mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


ATTENTIONS = {"softmax": SoftmaxAttention}


def build_attention(config: ModelConfig) -> nn.Module:
    return ATTENTIONS[config.attention](config)
