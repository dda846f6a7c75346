"""The sparse-distribution-diffusion (SDD) network: a bidirectional denoiser whose input at every position is a
small weighted set of k candidate tokens instead of one token. Its noise, loss, evaluation and sampler are the sdd
family's (picolm/methods/sdd.py).

State. Each position i holds k candidates: token ids v_i1..v_ik and weights p_i1..p_ik (summing to 1). A clean
token x is candidate 1 with p = 1; the other k - 1 slots hold random tokens with p = 0 (invisible).

Model (`SDD`, built on GPT's embedding, positions, blocks and head):
- input stream h_i = sum_j p_ij E[v_ij] (+ the position's embedding);
- candidate attention (once, before the blocks): the L queries attend over all L*k candidate embeddings
  (E[v_ij] + position i, rotated to position i under RoPE) with log p_ij added to the attention logits, so a
  candidate with p = 0 is invisible and a likely one is louder; its output is added to the stream;
- the usual bidirectional blocks and final norm;
- a learned readout over k: r_ij = softmax_j(q(h_i) . key(E[v_ij]) / sqrt(C) + log p_ij),
  out_i = h_i + W sum_j r_ij E[v_ij], then the (tied) head over the vocabulary, IGNORE included.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from picolm.config import ModelConfig
from picolm.errors import PicolmError
from picolm.models.gpt import GPT, build_norm
from picolm.models.linear import Linear
from picolm.models.position import apply_rotary


def _no_left_to_right() -> PicolmError:
    return PicolmError("an sdd model has no KV cache and does not decode left to right: it denoises the whole "
                       "context at once (picolm generate)", field="model.arch")


class CandidateAttention(nn.Module):
    """Queries from the position stream; keys and values from every candidate of every position; the additive
    bias (log p) silences candidates with p = 0."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.ln_query = build_norm(config)
        self.ln_candidate = build_norm(config)
        self.query = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.key_value = Linear(config.n_embd, 2 * config.n_embd, bias=config.bias)
        self.proj = Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor, candidates: torch.Tensor, bias: torch.Tensor, rotary=None,
                candidate_rotary=None) -> torch.Tensor:
        """x (B, L, C); candidates (B, N, C) with N = L * k; bias (B, 1, 1 or L, N), -inf where invisible."""
        B, L, C = x.shape
        N, H = candidates.shape[1], self.n_head
        q = self.query(self.ln_query(x)).view(B, L, H, C // H).transpose(1, 2)
        k, v = self.key_value(self.ln_candidate(candidates)).view(B, N, 2, H, C // H).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *candidate_rotary)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, L, C))


class CandidateReadout(nn.Module):
    """out_i = h_i + W sum_j r_ij E[v_ij], r_ij = softmax_j(q(h_i) . key(E[v_ij]) / sqrt(C) + log p_ij)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.query = Linear(config.n_embd, config.n_embd, bias=False)
        self.key = Linear(config.n_embd, config.n_embd, bias=False)
        self.value = Linear(config.n_embd, config.n_embd, bias=config.bias)

    def weights(self, h: torch.Tensor, embeddings: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("blc,blkc->blk", self.query(h), self.key(embeddings)) / math.sqrt(h.shape[-1])
        return (scores + log_p.to(scores.dtype)).softmax(-1)

    def forward(self, h: torch.Tensor, embeddings: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        r = self.weights(h, embeddings, log_p)
        return h + self.value(torch.einsum("blk,blkc->blc", r, embeddings))


def one_hot_state(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, L) as a state with k = 1: ids (B, L, 1), weights 1."""
    return ids[..., None], torch.ones(*ids.shape, 1, device=ids.device)


class SDD(GPT):
    """Sparse distribution diffusion on GPT's pieces. `forward(ids (B, L, k), probs (B, L, k))` -> logits
    (B, L, vocab); plain ids (B, L) are read as a clean state with k = 1."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        if config.causal:
            raise ValueError("an sdd model is bidirectional: model.causal must be false")
        if config.ignore_id < 0:
            raise ValueError("model.ignore_id must be set (the last vocabulary id) before building an sdd model")
        self.candidate_attn = CandidateAttention(config)
        self.readout = CandidateReadout(config)
        for module in (self.candidate_attn, self.readout):
            module.apply(self._init_weights)
        nn.init.normal_(self.candidate_attn.proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def mixture(self, idx: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """sum_j p_ij E[v_ij]: (B, L, C)."""
        tokens = self.wte(idx)
        return (probs[..., None].to(tokens.dtype) * tokens).sum(-2)

    def embed_state(self, idx: torch.Tensor, probs: torch.Tensor, positions: torch.Tensor,
                    attn_mask: torch.Tensor | None = None):
        """The blocks' input (B, L, C): the weighted mixture plus position, after candidate attention; the rotary
        angles; the candidates' embeddings (B, L, k, C)."""
        B, L, k = idx.shape
        tokens = self.wte(idx)
        x = (probs[..., None].to(tokens.dtype) * tokens).sum(-2)
        candidates = tokens
        pos_emb = self.position.input_embedding(positions)
        if pos_emb is not None:
            x = x + pos_emb
            candidates = candidates + pos_emb.unsqueeze(-2)
        x = self.drop(x)
        rotary = self.position.rotary(positions)
        candidate_rotary = None if rotary is None else self.position.rotary(positions.repeat_interleave(k, dim=-1))
        bias = probs.float().log().reshape(B, 1, 1, L * k)  # log 0 = -inf: that candidate is invisible
        if attn_mask is not None:  # (B, 1, L, S): S = L keys per query, each with its k candidates
            bias = bias.masked_fill(~attn_mask.repeat_interleave(k, dim=-1), float("-inf"))
        x = x + self.drop(self.candidate_attn(x, candidates.flatten(1, 2), bias, rotary, candidate_rotary))
        return x, rotary, tokens

    def embed(self, idx: torch.Tensor, positions: torch.Tensor, cache=None):
        """GPT's `embed` for token ids (B, T) read as a clean state (the analyses use it)."""
        if cache is not None:
            raise _no_left_to_right()
        return self.embed_state(*one_hot_state(idx), positions)

    def _run(self, idx, probs, positions, attn_mask):
        if probs is None:
            if idx.dim() != 2:
                raise ValueError("candidates (B, L, k) need their probabilities")
            idx, probs = one_hot_state(idx)
        if not torch.is_floating_point(probs) or probs.shape != idx.shape:
            raise ValueError("probs must be floating point weights shaped like the candidates (B, L, k)")
        L = idx.shape[1]
        if positions is None:
            if L > self.config.block_size:
                raise ValueError(f"sequence of {L} positions is longer than block_size={self.config.block_size}")
            positions = torch.arange(L, device=idx.device)
        x, rotary, tokens = self.embed_state(idx, probs, positions, attn_mask)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, rotary, attn_mask, use_reentrant=False)
            else:
                x = block(x, rotary, attn_mask)
        return self.ln_f(x), tokens, probs

    def hidden_states(self, idx: torch.Tensor, positions: torch.Tensor | None = None,
                      attn_mask: torch.Tensor | None = None, cache=None, probs: torch.Tensor | None = None):
        """Final-norm hidden states (B, L, C) of a state (ids (B, L, k) and probs), or of token ids (B, L)."""
        if cache is not None:
            raise _no_left_to_right()
        return self._run(idx, probs, positions, attn_mask)[0]

    def forward(self, idx: torch.Tensor, probs: torch.Tensor | None = None, *, positions=None, attn_mask=None,
                targets=None, predict_at=None) -> torch.Tensor:
        """Logits (B, L, vocab), IGNORE included, for candidates (B, L, k) with weights probs (B, L, k)."""
        if targets is not None or predict_at is not None:
            raise PicolmError("an sdd model trains with its own objective (objective.kind sdd), not next-token "
                              "or preference targets", field="objective.kind")
        h, tokens, probs = self._run(idx, probs, positions, attn_mask)
        return F.linear(self.readout(h, tokens, probs.float().log()), self.lm_head.weight)

    def new_cache(self, *args, **kwargs):
        raise _no_left_to_right()

    def decode(self, *args, **kwargs):
        raise _no_left_to_right()
