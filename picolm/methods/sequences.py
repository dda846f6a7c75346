"""Log-probabilities of whole responses in packed preference rows (`collate_pairs`): what preference training,
its reference pass and the SFT monitor score."""

from __future__ import annotations

import torch

from picolm.data.examples import PairExamples, in_order


def sequence_log_probs(model, batch: dict[str, torch.Tensor], length_normalize: bool = False):
    """Summed (or mean) log-probabilities of each pair's chosen and rejected responses: two (B,) tensors."""
    token_log_probs = model(batch["input_ids"], batch["targets"], positions=batch["positions"],
                            attn_mask=batch["attn_mask"], predict_at=batch["predict_at"])
    sums = torch.zeros(len(batch["lengths"]), dtype=token_log_probs.dtype, device=token_log_probs.device)
    sums.index_add_(0, batch["sequence"], token_log_probs)
    if length_normalize:
        sums = sums / batch["lengths"]
    return sums[0::2], sums[1::2]


@torch.no_grad()
def pair_log_probs(model, examples: PairExamples, batch_size: int, pad_id: int, device, autocast,
                   length_normalize: bool, limit: int | None = None) -> torch.Tensor:
    """(N, 2): the model's log-probabilities of every pair's chosen and rejected responses, on the CPU."""
    was_training = model.training
    model.eval()
    pieces = []
    try:
        for batch in in_order(examples, batch_size, pad_id, limit=limit):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                chosen, rejected = sequence_log_probs(model, batch, length_normalize)
            pieces.append(torch.stack([chosen, rejected], dim=1).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(pieces)
