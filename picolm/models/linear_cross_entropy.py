"""Fused head projection + cross-entropy, computed in row chunks.

The (tokens x vocab) logits never exist whole: each chunk's logits are made, reduced to loss and
gradient while they are hot in cache, and dropped. On a CPU the full-size log-softmax, its backward and
the zero-filled gradient buffer of `F.cross_entropy` cost about a quarter of a small model's step.
"""

from __future__ import annotations

import torch

from picolm.data.examples import IGNORE_INDEX

CHUNK_ELEMENTS = 1 << 22  # logits per chunk (16 MB in float32): big enough for efficient matmuls, far from the whole


def _compute_dtype(device_type: str) -> torch.dtype | None:
    """bf16 under bf16 autocast. Under fp16 the head stays float32: the per-token gradients, divided by
    the token count before GradScaler's scale applies, would underflow in fp16."""
    if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.bfloat16:
        return torch.bfloat16
    return None


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows):
        device_type = hidden.device.type
        dtype = _compute_dtype(device_type) or hidden.dtype
        acc_dtype = torch.promote_types(dtype, torch.float32)  # float32, or float64 for exact checks
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        valid = targets != IGNORE_INDEX
        n_valid = valid.sum().clamp(min=1)
        safe_targets = targets.clamp(min=0)
        loss_sum = torch.zeros((), dtype=acc_dtype, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = torch.zeros_like(weight, dtype=acc_dtype) if needs_grad else None
        w = weight.to(dtype)
        with torch.autocast(device_type, enabled=False):
            for start in range(0, hidden.shape[0], chunk_rows):
                h = hidden[start:start + chunk_rows].to(dtype)
                t = safe_targets[start:start + chunk_rows]
                mask = valid[start:start + chunk_rows]
                logits = (h @ w.t()).to(acc_dtype)
                target_logit = logits.gather(1, t[:, None]).squeeze(1)
                row_max, predicted = logits.max(dim=-1)
                exps = logits.sub_(row_max[:, None]).exp_()  # in place: the chunk's one full-size buffer
                sum_exps = exps.sum(dim=-1)
                loss_sum += ((row_max + sum_exps.log() - target_logit) * mask).sum()
                correct += ((predicted == t) & mask).sum()
                if needs_grad:
                    # d loss / d logits = scale * (softmax - onehot(target)), scale = mask / n_valid per row; the
                    # row scales go to the small operands (rows of h, of the result), the one-hot part to the
                    # target rows, so the logits are never rewritten as probabilities
                    scale = (mask.to(acc_dtype) / n_valid)[:, None]
                    softmax_scale = scale / sum_exps[:, None]
                    exps = exps.to(dtype)
                    grad_hidden[start:start + chunk_rows] = torch.addcmul(
                        w[t].to(acc_dtype) * -scale, (exps @ w).to(acc_dtype), softmax_scale).to(hidden.dtype)
                    h = h.to(acc_dtype)
                    if dtype == acc_dtype:
                        grad_weight.addmm_(exps.t(), h * softmax_scale)
                    else:
                        grad_weight += (exps.t() @ (h * softmax_scale).to(dtype)).to(acc_dtype)
                    grad_weight.index_add_(0, t, h * scale, alpha=-1)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(correct, n_valid)
        return loss_sum / n_valid, correct, n_valid

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct, _grad_count):
        grad_hidden, grad_weight = ctx.saved_tensors
        dh = grad_hidden * grad_loss.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None
        dw = (grad_weight * grad_loss).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return dh, dw, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    """Mean cross-entropy of `hidden @ weight.T` against `targets` (IGNORE_INDEX skipped).

    hidden: (..., C); weight: (V, C); targets: (...). Returns (loss, correct, counted): the mean loss,
    the number of argmax hits and the number of counted targets.
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    chunk_rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_rows)


class _LinearLogProbs(torch.autograd.Function):
    """Per-row log p(target) under softmax(hidden @ weight.T); the backward pass recomputes each chunk's logits,
    since the per-row upstream gradients are unknown until then."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows, with_hits):
        device_type = hidden.device.type
        dtype = _compute_dtype(device_type) or hidden.dtype
        acc_dtype = torch.promote_types(dtype, torch.float32)
        log_probs = torch.empty(hidden.shape[0], dtype=acc_dtype, device=hidden.device)
        hits = torch.zeros(hidden.shape[0] if with_hits else 0, dtype=torch.bool, device=hidden.device)
        w = weight.to(dtype)
        with torch.autocast(device_type, enabled=False):
            for start in range(0, hidden.shape[0], chunk_rows):
                logits = (hidden[start:start + chunk_rows].to(dtype) @ w.t()).to(acc_dtype)
                t = targets[start:start + chunk_rows]
                log_probs[start:start + chunk_rows] = logits.gather(1, t[:, None]).squeeze(1) - logits.logsumexp(-1)
                if with_hits:
                    hits[start:start + chunk_rows] = logits.argmax(-1) == t
        ctx.save_for_backward(hidden, weight, targets)
        ctx.chunk_rows, ctx.dtype, ctx.acc_dtype = chunk_rows, dtype, acc_dtype
        ctx.mark_non_differentiable(hits)
        return log_probs, hits

    @staticmethod
    def backward(ctx, grad_log_probs, _grad_hits):
        hidden, weight, targets = ctx.saved_tensors
        dtype, acc_dtype, rows = ctx.dtype, ctx.acc_dtype, ctx.chunk_rows
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=acc_dtype) if ctx.needs_input_grad[1] else None
        w = weight.to(dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], rows):
                h = hidden[start:start + rows].to(dtype)
                t = targets[start:start + rows]
                # d log p(t) / d logits = onehot(t) - softmax(logits), scaled by each row's upstream gradient
                grad_logits = (h @ w.t()).to(acc_dtype).softmax(-1).neg_()
                grad_logits[torch.arange(len(t), device=t.device), t] += 1.0
                grad_logits.mul_(grad_log_probs[start:start + rows, None].to(acc_dtype))
                grad_logits = grad_logits.to(dtype)
                if grad_hidden is not None:
                    grad_hidden[start:start + rows] = (grad_logits @ w).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight += (grad_logits.t() @ h).to(acc_dtype)
        return grad_hidden, grad_weight.to(weight.dtype) if grad_weight is not None else None, None, None, None


def linear_log_probs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, with_hits: bool = False):
    """log softmax(hidden @ weight.T)[target] for each row of hidden (N, C) and target (N,), in float32;
    the (N x vocab) logits are made a chunk at a time and never kept. `with_hits`: (log-probabilities, whether
    each target is the argmax) instead."""
    chunk_rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
    log_probs, hits = _LinearLogProbs.apply(hidden, weight, targets, chunk_rows, with_hits)
    return (log_probs, hits) if with_hits else log_probs
