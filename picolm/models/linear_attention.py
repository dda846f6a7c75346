"""Linear attention (Katharopoulos et al. 2020): softmax(q k^T) replaced by a kernel phi(q) phi(k)^T.

y_t = phi(q_t) S_t / (phi(q_t) . z_t + eps), with S_t = sum_{s<=t} phi(k_s) v_s^T and z_t = sum_{s<=t} phi(k_s).
Three forms compute it: the masked quadratic form (any attention mask; the reference), the chunked form for
training (quadratic inside chunks of `chunk_size`, the state carried between them, so memory grows linearly
with the sequence), and the recurrent form for generation (a constant-size state per layer). The arithmetic
runs in float32 whatever the autocast dtype. With RoPE, the rotation applies to the features in the numerator
only and the normaliser uses them unrotated (RoFormer, section 3.3), so it stays positive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from picolm.config import ModelConfig
from picolm.models.linear import Linear
from picolm.models.position import apply_rotary

EPS = 1e-6
FEATURE_MAPS = {"elu": lambda x: F.elu(x) + 1.0, "relu": F.relu}


class RecurrentState:
    """One layer's decoding state: S (B, H, D, D) and the normaliser z (B, H, D), float32, whatever the length."""

    def __init__(self, state: torch.Tensor, normalizer: torch.Tensor):
        self.state, self.normalizer, self.length = state, normalizer, 0

    def keep_rows(self, index: torch.Tensor) -> None:
        self.state = self.state.index_select(0, index.to(self.state.device))
        self.normalizer = self.normalizer.index_select(0, index.to(self.normalizer.device))


class Features:
    """A layer's feature-mapped queries and keys (plain and, with RoPE, rotated) and values, float32 (B, H, T, D)."""

    def __init__(self, q, k, v, rotary, feature_map):
        self.q, self.k, self.v = feature_map(q.float()), feature_map(k.float()), v.float()
        if rotary is None:
            self.q_num, self.k_num = self.q, self.k
        else:
            self.q_num, self.k_num = apply_rotary(self.q, *rotary), apply_rotary(self.k, *rotary)


def quadratic_form(f: Features, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (B, H, T, D) and the normalised kernel weights (B, H, T, S); `mask` True where a query may attend,
    None for all."""
    weights = f.q_num @ f.k_num.transpose(-2, -1)
    norms = f.q @ f.k.transpose(-2, -1)
    if mask is not None:
        weights, norms = weights * mask, norms * mask
    weights = weights / (norms.sum(-1, keepdim=True) + EPS)
    return weights @ f.v, weights


def chunked_form(f: Features, chunk_size: int, state: torch.Tensor | None = None,
                 normalizer: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal outputs (B, H, T, D), after an optional earlier state; also the state and normaliser after the
    last token."""
    B, H, T, D = f.v.shape
    n = -(-T // chunk_size)
    pad = n * chunk_size - T  # zero features: the padding adds nothing to any state

    def chunks(x):
        return F.pad(x, (0, 0, 0, pad)).view(B, H, n, chunk_size, x.shape[-1])

    q, k, q_num, k_num, v = map(chunks, (f.q, f.k, f.q_num, f.k_num, f.v))
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=v.device).tril()
    numerator = ((q_num @ k_num.transpose(-2, -1)) * causal) @ v
    denominator = ((q @ k.transpose(-2, -1)) * causal).sum(-1)
    chunk_states = k_num.transpose(-2, -1) @ v  # (B, H, n, D, D)
    chunk_normalizers = k.sum(-2)  # (B, H, n, D)
    states = chunk_states.cumsum(2)
    normalizers = chunk_normalizers.cumsum(2)
    before, before_norm = states - chunk_states, normalizers - chunk_normalizers  # everything in earlier chunks
    if state is not None:
        before, before_norm = before + state[:, :, None], before_norm + normalizer[:, :, None]
        states, normalizers = states + state[:, :, None], normalizers + normalizer[:, :, None]
    numerator = numerator + q_num @ before
    denominator = denominator + (q @ before_norm[..., None])[..., 0]
    y = numerator / (denominator[..., None] + EPS)
    return y.reshape(B, H, n * chunk_size, D)[:, :, :T], states[:, :, -1], normalizers[:, :, -1]


def recurrent_step(f: Features, cache: RecurrentState) -> torch.Tensor:
    """One new token (T = 1): fold its key and value into the state, then read the state with its query."""
    cache.state += f.k_num.transpose(-2, -1) @ f.v
    cache.normalizer += f.k[:, :, 0]
    numerator = f.q_num @ cache.state
    denominator = (f.q @ cache.normalizer[..., None])
    return numerator / (denominator + EPS)


class LinearAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.causal = config.causal
        self.chunk_size = config.chunk_size
        self.feature_map = FEATURE_MAPS[config.feature_map]
        self.qkv = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = Linear(config.n_embd, config.n_embd, bias=config.bias)

    def new_cache(self, batch_size: int, capacity: int, like: torch.Tensor) -> RecurrentState:
        """The recurrent state: its size does not depend on `capacity`."""
        D = self.qkv.in_features // self.n_head
        return RecurrentState(torch.zeros(batch_size, self.n_head, D, D, device=like.device),
                              torch.zeros(batch_size, self.n_head, D, device=like.device))

    def features(self, x: torch.Tensor, rotary=None) -> Features:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        return Features(q, k, v, rotary, self.feature_map)

    def _mask(self, attn_mask: torch.Tensor | None, T: int, device) -> torch.Tensor | None:
        if attn_mask is not None:
            return attn_mask
        return torch.ones(T, T, dtype=torch.bool, device=device).tril() if self.causal else None

    def weights(self, x: torch.Tensor, rotary=None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The normalised kernel weights (B, H, T, T) that mix the values (rows sum to 1 without RoPE)."""
        return quadratic_form(self.features(x, rotary), self._mask(attn_mask, x.shape[1], x.device))[1]

    def forward(self, x: torch.Tensor, rotary=None, attn_mask: torch.Tensor | None = None,
                cache: RecurrentState | None = None) -> torch.Tensor:
        """`attn_mask` (B, 1, T, S), True where a query may attend (packed or left-padded rows), takes the
        quadratic form. With a cache, the tokens continue the cached sequence and fold into its state."""
        B, T, C = x.shape
        f = self.features(x, rotary)
        if cache is not None and T == 1 and cache.length > 0:
            y = recurrent_step(f, cache)
        elif attn_mask is not None or not self.causal:
            if cache is not None and cache.length > 0:
                raise ValueError("a masked prefill must start from an empty state")
            y, _ = quadratic_form(f, self._mask(attn_mask, T, x.device))
            if cache is not None:  # the state holds what the last query sees (left padding never enters it)
                seen = attn_mask[:, :, -1, :, None].float() if attn_mask is not None else 1.0
                cache.state += (f.k_num * seen).transpose(-2, -1) @ f.v
                cache.normalizer += (f.k * seen).sum(-2)
        elif cache is not None:
            y, cache.state, cache.normalizer = chunked_form(f, self.chunk_size, cache.state, cache.normalizer)
        else:
            y, _, _ = chunked_form(f, self.chunk_size)
        if cache is not None:
            cache.length += T
        return self.proj(y.to(x.dtype).transpose(1, 2).reshape(B, T, C))
