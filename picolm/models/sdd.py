"""Sparse distribution diffusion (SDD): an experimental bidirectional denoiser whose input at every position is a
small weighted set of k candidate tokens instead of one token.

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

Noise at level t in [0, 1]: each candidate is swapped for a uniformly random token of the vocabulary with
probability s(p, t) = t^(1 + p) (p: its weight before noising; likely candidates survive longer), and the
weights move toward uniform: p_t = (1 - t) p + t / k. At t = 0 the state is clean; at t = 1 every candidate is
random with weight 1/k, in expectation the uniform distribution over the vocabulary.

Training windows are cut to documents: when a window holds a whole document after its first EOS, the row is
that document (from its first token to its EOS), and the rest of the row is padding whose input and target are
the IGNORE token (an extra last vocabulary id). Otherwise the window is used as it is (no padding). The loss is
the cross-entropy of the clean token (IGNORE at padding) at every position, at t drawn antithetically across the
batch. It is a denoising loss, not a bound on the likelihood: no perplexity is reported for SDD.

Sampler (deterministic, no re-noising): the canvas is the whole context, as in training. The prompt's positions
are clean one-hot candidates; the rest start as seeded random candidates with weight 1/k (t = 1). For steps
s = 1..N, t' = 1 - s/N: predict every free position, keep its top-k renormalised (at the sampling temperature)
and mix toward uniform, p = (1 - t') topk + t'/k. The result is the last step's argmax, cut at the first EOS or
IGNORE.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from picolm.config import ModelConfig
from picolm.errors import PicolmError
from picolm.models.diffusion import antithetic_times
from picolm.models.gpt import GPT, build_norm
from picolm.models.position import apply_rotary

SDD_METRICS = ("loss", "accuracy", "ignore_acc")
NOT_A_BOUND = ("sdd's loss is a denoising cross-entropy (clean token from a noisy candidate state, averaged over "
               "stratified t), not a bound on the likelihood: no perplexity is reported")


def is_sdd(model) -> bool:
    return getattr(getattr(model, "config", None), "arch", None) == "sdd"


def _no_left_to_right() -> PicolmError:
    return PicolmError("an sdd model has no KV cache and does not decode left to right: it denoises the whole "
                       "context at once (generate_ids / picolm generate)", field="model.arch")


# ---------------------------------------------------------------- the model


class CandidateAttention(nn.Module):
    """Queries from the position stream; keys and values from every candidate of every position; the additive
    bias (log p) silences candidates with p = 0."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.ln_query = build_norm(config)
        self.ln_candidate = build_norm(config)
        self.query = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.key_value = nn.Linear(config.n_embd, 2 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

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
        self.query = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.key = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.value = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

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


# ---------------------------------------------------------------- noise, documents, loss


def clean_state(x0: torch.Tensor, k: int, vocab_size: int, generator: torch.Generator | None = None):
    """Clean tokens (B, L) -> ids (B, L, k) with x0 first (p = 1) and k - 1 random tokens (p = 0), and probs."""
    idx = torch.randint(vocab_size, (*x0.shape, k), generator=generator, device=x0.device)
    idx[..., 0] = x0
    probs = torch.zeros(idx.shape, device=x0.device)
    probs[..., 0] = 1.0
    return idx, probs


def swap_probability(probs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """s(p, t) = t^(1 + p) for a candidate of weight p at a row's noise level t (B,): 0 at t = 0, 1 at t = 1,
    smaller for likelier candidates in between."""
    return t.view(-1, *[1] * (probs.dim() - 1)) ** (1 + probs)


def add_noise(idx: torch.Tensor, probs: torch.Tensor, t: torch.Tensor, vocab_size: int,
              generator: torch.Generator | None = None):
    """Swap each candidate for a uniformly random token with probability s(p, t); weights -> (1 - t) p + t / k.
    Returns the noisy ids, probs, and where a swap happened."""
    swapped = torch.rand(idx.shape, generator=generator, device=idx.device) < swap_probability(probs, t)
    random_tokens = torch.randint(vocab_size, idx.shape, generator=generator, device=idx.device)
    tt = t.view(-1, *[1] * (probs.dim() - 1))
    return torch.where(swapped, random_tokens, idx), (1 - tt) * probs + tt / idx.shape[-1], swapped


def documents(rows: torch.Tensor, eos_id: int, ignore_id: int) -> torch.Tensor:
    """Training windows (B, L) -> the clean rows: where a whole document follows the window's first EOS, that
    document moved to the start (its EOS kept) and IGNORE after it; other windows as they are."""
    B, L = rows.shape
    pos = torch.arange(L, device=rows.device)
    eos = rows == eos_id
    first = torch.where(eos.any(1), eos.int().argmax(1), L)
    start = first + 1
    later = eos & (pos[None, :] >= start[:, None])
    end = torch.where(later.any(1), later.int().argmax(1), L)  # the document's EOS
    whole = end < L
    start = torch.where(whole, start, 0)
    length = torch.where(whole, end - start + 1, L)
    shifted = rows.gather(1, (start[:, None] + pos[None, :]).clamp(max=L - 1))
    return torch.where(pos[None, :] < length[:, None], shifted, ignore_id)


def score(logits: torch.Tensor, x0: torch.Tensor, ignore_id: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Summed cross-entropy over every position, accuracy on real tokens, ignore_acc on padding (IGNORE targets):
    `{name: (sum, count)}`."""
    losses = F.cross_entropy(logits.float().flatten(0, 1), x0.flatten(), reduction="none")
    correct = logits.argmax(-1) == x0
    padding = x0 == ignore_id
    n = torch.tensor(x0.numel(), device=x0.device)
    return {"loss": (losses.sum(), n), "accuracy": ((correct & ~padding).sum(), (~padding).sum()),
            "ignore_acc": ((correct & padding).sum(), padding.sum())}


def denoising_metrics(model, x0: torch.Tensor, t: torch.Tensor, k: int, generator: torch.Generator | None = None):
    """Noise clean rows x0 (B, L) to level t (B,) with k candidates and score the model's predictions."""
    config = model.config
    idx, probs = clean_state(x0, k, config.vocab_size, generator)
    idx, probs, _ = add_noise(idx, probs, t, config.vocab_size, generator)
    return score(model(idx, probs), x0, config.ignore_id)


def k_at(curriculum: list[int], fraction: float) -> int:
    """The curriculum's k at a fraction of training: the steps are split evenly between its entries."""
    stage = min(max(int(fraction * len(curriculum)), 0), len(curriculum) - 1)
    return curriculum[stage]


@torch.no_grad()
def evaluate_sdd(model, tokens: np.ndarray, block_size: int, eos_id: int, batch_size: int = 16,
                 max_windows: int | None = None, device="cpu", autocast=nullcontext, times_per_window: int = 4,
                 seed: int = 0, k: int | None = None) -> dict[str, float]:
    """Denoising loss, accuracy (real tokens) and ignore_acc (padding) over evaluation windows, each at
    `times_per_window` stratified noise levels, with the model's k (the sampler's). t and the noise come from a
    fixed seed: two evaluations of one model agree exactly."""
    from picolm.data.loader import eval_windows

    starts = eval_windows(tokens, block_size, max_windows)
    if not starts:
        raise PicolmError(f"only {len(tokens)} tokens: fewer than one window of block_size = {block_size}",
                          field="evaluation")
    k = k or model.config.sdd_k or 1
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    try:
        for b in range(0, len(starts), batch_size):
            rows = np.stack([np.asarray(tokens[s:s + block_size], dtype=np.int64) for s in starts[b:b + batch_size]])
            x0 = documents(torch.from_numpy(rows).to(device), eos_id, model.config.ignore_id)
            x0 = x0.repeat(times_per_window, 1)
            t = antithetic_times(len(x0), 0.0, generator, device)
            with autocast():
                metrics = denoising_metrics(model, x0, t, k, generator)
            for name, (total, count) in metrics.items():
                sums[name] = sums.get(name, 0.0) + float(total)
                counts[name] = counts.get(name, 0) + int(count)
    finally:
        model.train(was_training)
    result = {name: sums[name] / counts[name] if counts[name] else float("nan") for name in SDD_METRICS}
    result["tokens"] = counts["loss"] // times_per_window
    return result


# ---------------------------------------------------------------- sampler


@torch.inference_mode()
def sample(model, prompts: list[list[int]], steps: int, k: int | None = None, temperature: float = 1.0,
           logits_filter=None, vocab_size: int | None = None, seed: int | None = 0, device="cpu",
           trace: list | None = None) -> torch.Tensor:
    """(B, block_size) tokens: every row's canvas (its prompt at the start, kept clean) denoised from t = 1 in
    `steps` deterministic steps (one forward pass each, no re-noising); the seed only draws the starting random
    candidates. `vocab_size` (the tokenizer's) keeps predictions inside the real vocabulary, IGNORE aside."""
    config = model.config
    L, V, ignore_id = config.block_size, config.vocab_size, config.ignore_id
    k = k or config.sdd_k or 1
    if steps < 1:
        raise PicolmError("must be at least 1", field="--steps")
    if any(len(p) >= L for p in prompts):
        raise PicolmError(f"every prompt needs at most {L - 1} tokens", field="prompt")
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device)
    generator.manual_seed(seed) if seed is not None else generator.seed()
    B = len(prompts)
    idx = torch.randint(V, (B, L, k), generator=generator, device=device)
    probs = torch.full((B, L, k), 1.0 / k, device=device)
    fixed = torch.zeros(B, L, dtype=torch.bool, device=device)
    for b, prompt in enumerate(prompts):
        if prompt:
            idx[b, :len(prompt), 0] = torch.tensor(prompt, device=device)
            probs[b, :len(prompt)] = 0.0
            probs[b, :len(prompt), 0] = 1.0
            fixed[b, :len(prompt)] = True
    allowed = torch.ones(V, dtype=torch.bool, device=device)
    if vocab_size is not None and vocab_size < V:
        allowed[vocab_size:] = False
        allowed[ignore_id] = True
    one_hot = torch.zeros(k, device=device)
    one_hot[0] = 1.0
    try:
        for s in range(steps):
            logits = model(idx, probs).float().masked_fill(~allowed, float("-inf"))
            if logits_filter is not None:
                logits = logits_filter(logits)
            top = logits.topk(k, dim=-1)
            weights = (top.values / temperature).softmax(-1) if temperature > 0 else one_hot.expand_as(top.values)
            t_next = 1.0 - (s + 1) / steps
            new_probs = (1 - t_next) * weights + t_next / k
            idx = torch.where(fixed[..., None], idx, top.indices)
            probs = torch.where(fixed[..., None], probs, new_probs)
            if trace is not None:
                trace.append((idx.clone(), probs.clone()))
    finally:
        model.train(was_training)
    return idx[..., 0]


def sdd_generate_ids(model, prompts: list[list[int]], options, eos_id: int | None = None,
                     vocab_size: int | None = None, device="cpu") -> list[list[int]]:
    """The new ids after every prompt, up to max_new_tokens, cut before the first EOS or IGNORE. A prompt of
    just EOS (an empty prompt) writes a new document from the first position, as training rows start."""
    options.validate()
    options.check_model(model)
    prompts = [[] if eos_id is not None and list(p) == [eos_id] else list(p) for p in prompts]
    room = model.config.block_size - max(len(p) for p in prompts)
    length = min(options.max_new_tokens, room)
    steps = options.steps or max(length, 1)
    from picolm.generate import filter_logits

    rows = sample(model, prompts, steps, temperature=options.temperature,
                  logits_filter=lambda logits: filter_logits(logits, options.top_k, options.top_p),
                  vocab_size=vocab_size, seed=options.seed, device=device).tolist()
    ends = {i for i in (eos_id, model.config.ignore_id) if i is not None}
    result = []
    for row, prompt in zip(rows, prompts):
        new = row[len(prompt):len(prompt) + length]
        cut = next((i for i, token in enumerate(new) if token in ends), len(new))
        result.append(new[:cut])
    return result


def prepare_vocabulary(model_config: ModelConfig, objective_config, tokenizer) -> None:
    """sdd training: the IGNORE token after the tokenizer's ids (the last vocabulary id) and the sampler's k."""
    from picolm.config import sdd_final_k

    vocab = tokenizer.vocab_size
    if model_config.vocab_size == 0:
        model_config.vocab_size = vocab + 1
    elif model_config.vocab_size < vocab + 1:
        raise PicolmError(f"{model_config.vocab_size} is smaller than the tokenizer's {vocab} plus the IGNORE token",
                          field="model.vocab_size")
    model_config.ignore_id = model_config.vocab_size - 1
    k = sdd_final_k(objective_config)
    if k > model_config.vocab_size:
        field = "objective.sdd_k_curriculum" if objective_config.sdd_k_curriculum else "objective.sdd_k"
        raise PicolmError(f"k = {k} candidates per position is more than the vocabulary of "
                          f"{model_config.vocab_size}", field=field)
    model_config.sdd_k = k
