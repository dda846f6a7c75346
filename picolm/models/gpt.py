"""The decoder: token embeddings -> blocks of attention and MLP -> final norm -> head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from picolm.config import ModelConfig
from picolm.models.attention import LayerCache, build_attention
from picolm.models.lean_step import LeanStep
from picolm.models.linear import Linear
from picolm.models.linear_cross_entropy import linear_cross_entropy, linear_log_probs
from picolm.models.position import LearnedPosition, build_position

NORM_EPS = 1e-5  # GPT-2's LayerNorm epsilon; RMSNorm uses it too (Llama 2's rms_norm_eps)


def build_norm(config: ModelConfig) -> nn.Module:
    """`model.norm`: LayerNorm (with a bias when model.bias) or RMSNorm (a scale only)."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=NORM_EPS)
    return nn.LayerNorm(config.n_embd, eps=NORM_EPS, bias=config.bias)


class DecodeCache(list):
    """One decoding state per layer (keys and values, or a recurrent state), plus the last token embedding and, for
    softmax attention, the lean single-token step over these layers (made by `GPT.step` at its first token, so a
    cache only ever fed through `decode`, as the transformers adapter does, never copies the weights)."""

    def __init__(self, layers):
        super().__init__(layers)
        self.last_embedding: torch.Tensor | None = None
        self.steps_lean = all(isinstance(layer, LayerCache) for layer in self)
        self.lean_step: LeanStep | None = None

    @property
    def length(self) -> int:
        return self[0].length

    def keep_rows(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (B',) of every layer's state, in that order (beam search)."""
        for layer in self:
            layer.keep_rows(index)
        if self.last_embedding is not None:
            self.last_embedding = self.last_embedding.index_select(0, index.to(self.last_embedding.device))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class SwiGLU(nn.Module):
    """Gated MLP (Shazeer 2020) with the hidden size scaled by 2/3 to keep the parameter count."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = 64 * math.ceil(8 * config.n_embd / 3 / 64)
        self.gate_up = Linear(config.n_embd, 2 * hidden, bias=config.bias)
        self.proj = Linear(hidden, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = build_norm(config)
        self.attn = build_attention(config)
        self.ln_2 = build_norm(config)
        self.mlp = SwiGLU(config) if config.mlp == "swiglu" else MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rotary=None, attn_mask=None, cache=None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_1(x), rotary, attn_mask, cache))
        return x + self.dropout(self.mlp(self.ln_2(x)))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        if config.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set before building the model")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.position = build_position(config)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = build_norm(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.grad_checkpointing = False
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2's initialisation of every weight; the residual projections are scaled by depth."""
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def num_params(self, exclude_position: bool = True) -> int:
        """Parameters, counted once when tied; the position table is left out as in GPT-2's counts."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_position and isinstance(self.position, LearnedPosition):
            n -= self.position.wpe.weight.numel()
        return n

    def embed(self, idx: torch.Tensor, positions: torch.Tensor, cache: "DecodeCache | None" = None):
        """The blocks' input (B, T, C), the rotary angles, and the token embeddings the input was made from.

        Differential inputs are e_t - e_{t-1}, with e_{-1} = 0 at each sequence's position 0 (so packed and
        left-padded rows restart); a cache carries the last embedding across decoding steps."""
        tokens = self.wte(idx)
        x = tokens
        if self.config.differential:
            before = tokens.new_zeros(tokens[:, :1].shape) if cache is None or cache.last_embedding is None \
                else cache.last_embedding
            previous = torch.cat([before, tokens[:, :-1]], dim=1)
            starts = (positions == 0).expand(idx.shape)[..., None]
            x = tokens - previous.masked_fill(starts, 0.0)
            if cache is not None:
                cache.last_embedding = tokens[:, -1:]
            if self.training:
                self.delta_norms = x.detach().norm(dim=-1)  # read by the trainer's diagnostics
        pos_emb = self.position.input_embedding(positions)
        if pos_emb is not None:
            x = x + pos_emb
        return self.drop(x), self.position.rotary(positions), tokens

    def hidden_states(self, idx: torch.Tensor, positions: torch.Tensor | None = None,
                      attn_mask: torch.Tensor | None = None, cache: "DecodeCache | None" = None) -> torch.Tensor:
        """The final-norm hidden states (B, T, C) for token ids (B, T).

        Packed sequences (several continuations of one prompt in a row) and left-padded prompts pass their own
        `positions` (B, T) and `attn_mask` (B, 1, T, S), True where a token may attend. With a `cache` (from
        `new_cache`), the tokens come after the cached ones, whose keys and values are reused."""
        T = idx.shape[1]
        if positions is None:
            start_pos = cache.length if cache is not None else 0
            if start_pos + T > self.config.block_size:
                raise ValueError(f"sequence of {start_pos + T} tokens is longer than block_size={self.config.block_size}")
            positions = torch.arange(start_pos, start_pos + T, device=idx.device)
        x, rotary, tokens = self.embed(idx, positions, cache)
        for i, block in enumerate(self.blocks):
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, rotary, attn_mask, use_reentrant=False)
            else:
                x = block(x, rotary, attn_mask, cache[i] if cache is not None else None)
        if self.config.differential:
            x = x + tokens
        return self.ln_f(x)

    def new_cache(self, batch_size: int, capacity: int | None = None) -> "DecodeCache":
        """Empty per-layer decoding state for up to `capacity` tokens (default: block_size)."""
        return DecodeCache(block.attn.new_cache(batch_size, capacity or self.config.block_size, self.wte.weight)
                           for block in self.blocks)

    def decode(self, idx: torch.Tensor, cache: "DecodeCache", positions: torch.Tensor | None = None,
               attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, vocab) after the last of `idx` (B, T), which comes after the cached tokens and joins them."""
        hidden = self.hidden_states(idx, positions=positions, attn_mask=attn_mask, cache=cache)
        return self.lm_head(hidden[:, -1])

    def step(self, tokens: torch.Tensor, cache: "DecodeCache", positions: torch.Tensor | None = None,
             visible: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, vocab) after one more token per row (B,), which joins the cache: `decode` for a single
        token, through the lean step where there is one. `positions` (B,) for rows that count positions their own
        way, `visible` (B, at least cache.length + 1) True where a row may attend (None: everywhere)."""
        if cache.steps_lean:
            if cache.lean_step is None:
                cache.lean_step = LeanStep(self, tokens.shape[0])
            return cache.lean_step(tokens, cache, positions, visible)
        return self.decode(tokens[:, None], cache, None if positions is None else positions[:, None],
                           None if visible is None else visible[:, None, None, :cache.length + 1])

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, predict_at: torch.Tensor | None = None, with_hits: bool = False):
        """Logits (B, T, vocab) for token ids (B, T). With targets, (mean loss, correct, counted) instead, through
        the fused head + cross-entropy (the logits are never materialised). With `predict_at` (flat indices into
        B * T), the log-probability of each target (N,) at those positions: packed preference rows and masked
        diffusion need that (`with_hits`: also whether each target is the argmax)."""
        hidden = self.hidden_states(idx, positions=positions, attn_mask=attn_mask)
        weight = self.output_weight()
        if targets is None:
            return F.linear(hidden, weight)
        if predict_at is not None:
            return linear_log_probs(hidden.flatten(0, 1)[predict_at], weight, targets, with_hits)
        return linear_cross_entropy(hidden, weight, targets)

    def output_weight(self) -> torch.Tensor:
        """The head's rows: all of them, except a diffusion model's mask token (the last), which is never a
        prediction, so its logits stop at mask_id."""
        weight = self.lm_head.weight
        return weight[:self.config.mask_id] if self.config.mask_id >= 0 else weight
