"""Objectives: `loss(model, batch) -> (loss, metrics)`. The trainer knows nothing else of what is learned."""

from __future__ import annotations

import torch

from picolm.train.linear_cross_entropy import linear_cross_entropy


class NextToken:
    """Causal language modelling: predict token t+1 from tokens up to t."""

    name = "next_token"

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hidden = model.hidden_states(batch["input_ids"])
        loss, correct, counted = linear_cross_entropy(hidden, model.lm_head.weight, batch["targets"])
        return loss, {"correct": correct, "counted": counted}


OBJECTIVES = {"next_token": NextToken}
