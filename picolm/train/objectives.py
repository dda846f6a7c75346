"""Objectives: `loss(model, batch) -> (loss, metrics)`. The trainer knows nothing else of what is learned."""

from __future__ import annotations

import torch


class NextToken:
    """Causal language modelling: predict token t+1 from tokens up to t."""

    needs_causal = True

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, correct, counted = model(batch["input_ids"], targets=batch["targets"])  # via forward: DDP hooks run
        return loss, {"correct": correct, "counted": counted}

