"""Attention kinds. Softmax attention runs through `scaled_dot_product_attention` (flash kernels); linear
attention is in `linear_attention.py`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from picolm.config import ModelConfig
from picolm.models.linear_attention import LinearAttention
from picolm.models.position import apply_rotary


class LayerCache:
    """One layer's keys and values for decoding, (B, H, capacity, D) each, filled up to `length`."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys, self.values, self.length = keys, values, 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new (B, H, T, D) keys and values; return all of them so far."""
        end = self.length + k.shape[2]
        self.keys[:, :, self.length:end] = k
        self.values[:, :, self.length:end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class SoftmaxAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.causal = config.causal
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def new_cache(self, batch_size: int, capacity: int, like: torch.Tensor) -> LayerCache:
        shape = (batch_size, self.n_head, capacity, self.qkv.in_features // self.n_head)
        return LayerCache(like.new_empty(shape), like.new_empty(shape))

    def _heads(self, x: torch.Tensor, rotary) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values (B, H, T, D), rotated when the model uses RoPE."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        return q, k, v

    def weights(self, x: torch.Tensor, rotary=None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The attention probabilities (B, H, T, T) for inputs x (B, T, C): what `forward` mixes values with."""
        q, k, _ = self._heads(x, rotary)
        scores = q @ k.transpose(-2, -1) / k.shape[-1] ** 0.5
        T = x.shape[1]
        if attn_mask is None and self.causal:
            attn_mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        return scores.softmax(-1)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                attn_mask: torch.Tensor | None = None, cache: LayerCache | None = None) -> torch.Tensor:
        """`attn_mask` (B, 1, T, S), True where a query may attend, replaces the causal mask when given. With a
        cache, the new keys and values are appended to it and the queries see everything cached."""
        B, T, C = x.shape
        q, k, v = self._heads(x, rotary)
        is_causal = self.causal and attn_mask is None
        if cache is not None:
            if is_causal and T > 1 and cache.length > 0:  # new tokens after cached ones: causal, offset
                attn_mask = torch.ones(T, cache.length + T, dtype=torch.bool, device=x.device).tril(cache.length)
            is_causal = is_causal and cache.length == 0  # a single new token sees every cached one
            k, v = cache.append(k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


ATTENTIONS = {"softmax": SoftmaxAttention, "linear": LinearAttention}


def build_attention(config: ModelConfig) -> nn.Module:
    return ATTENTIONS[config.attention](config)
