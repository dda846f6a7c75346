"""Attention kinds. Softmax attention runs through `scaled_dot_product_attention` (flash kernels); linear
attention is in `linear_attention.py`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from picolm.config import ModelConfig
from picolm.models.linear import Linear
from picolm.models.linear_attention import LinearAttention
from picolm.models.position import apply_rotary


class LayerCache:
    """One layer's decoding state: the query, key and value of every token so far, as rows (capacity, B, 3C) filled
    up to `length`. Keeping a token's query beside its key and value lets a decoding step's qkv product write
    straight into its row (`LeanStep`); keys and values are read as strided (B, H, T, D) views of the rows."""

    def __init__(self, rows: torch.Tensor, n_head: int):
        self.rows, self.n_head, self.length = rows, n_head, 0

    def heads(self, part: int, start: int, end: int) -> torch.Tensor:
        """Rows start..end-1 of the queries (part 0), keys (1) or values (2), as (B, H, end - start, D)."""
        _, B, width = self.rows.shape
        return self.rows[start:end].view(end - start, B, 3, self.n_head, width // 3 // self.n_head)[:, :, part] \
            .permute(1, 2, 0, 3)

    def keep_rows(self, index: torch.Tensor) -> None:
        self.rows = self.rows.index_select(1, index.to(self.rows.device))

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new (B, H, T, D) keys and values; return all of them so far."""
        end = self.length + k.shape[2]
        self.heads(1, self.length, end).copy_(k)
        self.heads(2, self.length, end).copy_(v)
        self.length = end
        return self.heads(1, 0, end), self.heads(2, 0, end)


class SoftmaxAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.causal = config.causal
        self.dropout = config.dropout
        self.qkv = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = Linear(config.n_embd, config.n_embd, bias=config.bias)

    def new_cache(self, batch_size: int, capacity: int, like: torch.Tensor) -> LayerCache:
        return LayerCache(like.new_empty(capacity, batch_size, 3 * self.qkv.in_features), self.n_head)

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
