"""The DPO family of preference losses on sequence log-probabilities, as in the papers and in TRL.

Each takes the summed (or length-normalised) log-probabilities of the chosen and rejected responses under
the policy and the frozen reference, and returns per-pair losses and the implicit rewards
beta * (log pi - log pi_ref).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                    reference_rejected: torch.Tensor, loss_type: str = "sigmoid", beta: float = 0.1,
                    label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses, chosen_rewards, rejected_rewards), one value per pair.

    sigmoid: DPO (Rafailov et al. 2023); label_smoothing > 0 gives conservative DPO (cDPO).
    ipo: (h - 1/(2 beta))^2 on the log-ratio difference h (Azar et al. 2023).
    hinge: max(0, 1 - beta h), as in SLiC (Zhao et al. 2023).
    """
    chosen_logratio = policy_chosen - reference_chosen
    rejected_logratio = policy_rejected - reference_rejected
    margin = chosen_logratio - rejected_logratio
    if loss_type == "sigmoid":
        losses = (-F.logsigmoid(beta * margin) * (1 - label_smoothing)
                  - F.logsigmoid(-beta * margin) * label_smoothing)
    elif loss_type == "ipo":
        losses = (margin - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * margin)
    else:
        raise ValueError(f"unknown preference loss {loss_type!r}; choose from {', '.join(LOSS_TYPES)}")
    return losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()
