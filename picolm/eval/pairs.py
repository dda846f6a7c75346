"""Preference accuracy in the senses pipelines report, side by side, from each pair's summed log-probabilities.

- chosen_more_likely: the chosen response has the higher mean log-probability per token;
- logps_accuracy: the chosen response has the higher summed log-probability, no reference (what simple DPO
  pipelines call preference accuracy);
- rewards_accuracy and rewards_margin: DPO's implicit rewards beta * (log pi - log pi_ref) against a reference model
  (TRL's and picolm's training metrics `rewards/accuracies` and `rewards/margins`), on the log-probabilities the
  objective compares (summed, or per token where it normalises them by length).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from picolm.data.examples import PairExamples
from picolm.methods.sequences import pair_log_probs

BATCH = 16


def summed_log_probs(model, pairs: PairExamples, eos_id: int, device) -> torch.Tensor:
    """(N, 2): the summed log-probabilities of every pair's chosen and rejected responses (EOS included)."""
    return pair_log_probs(model, pairs, BATCH, eos_id, device, nullcontext, length_normalize=False)


def response_lengths(pairs: PairExamples) -> torch.Tensor:
    """(N, 2): the tokens of every pair's chosen and rejected responses (EOS included), as the log-probs count them."""
    return torch.tensor([[len(c), len(r)] for c, r in zip(pairs.chosen, pairs.rejected)], dtype=torch.float32)


def likelihood_scores(summed: torch.Tensor, lengths: torch.Tensor) -> dict[str, float]:
    per_token = summed / lengths
    return {"chosen_more_likely": float((per_token[:, 0] > per_token[:, 1]).float().mean()),
            "logps_accuracy": float((summed[:, 0] > summed[:, 1]).float().mean())}


def reward_scores(policy: torch.Tensor, reference: torch.Tensor, lengths: torch.Tensor, beta: float,
                  length_normalize: bool) -> dict[str, float]:
    """Implicit-reward accuracy and mean margin of a policy against a reference, from their summed log-probs."""
    scale = lengths if length_normalize else 1.0
    rewards = beta * (policy - reference) / scale
    margins = rewards[:, 0] - rewards[:, 1]
    return {"rewards_accuracy": float((margins > 0).float().mean()), "rewards_margin": float(margins.mean())}
