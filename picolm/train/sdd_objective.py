"""The sparse-distribution-diffusion objective (see picolm/models/sdd.py): the denoising cross-entropy of each
window's clean tokens (IGNORE at padding) from a noisy k-candidate state, t antithetic across the batch; k fixed
(objective.sdd_k) or on a curriculum (objective.sdd_k_curriculum, the steps split evenly), logged as train/k."""

from __future__ import annotations

import torch

from picolm.config import ObjectiveConfig
from picolm.models.diffusion import antithetic_times
from picolm.models.sdd import denoising_metrics, documents, k_at


class SparseDistributionDiffusion:
    needs_causal = False
    task = "text"
    reports_perplexity = False  # a denoising loss, not a likelihood bound

    def __init__(self, config: ObjectiveConfig):
        self.curriculum = list(config.sdd_k_curriculum) or [config.sdd_k]
        self.k = self.curriculum[0]
        self.eos_id: int | None = None

    def set_tokenizer(self, tokenizer) -> None:
        """Windows are cut into documents at the tokenizer's EOS."""
        self.eos_id = tokenizer.eos_id

    def set_progress(self, fraction: float) -> None:
        """The trainer's progress (step / total steps) picks the curriculum's k."""
        self.k = k_at(self.curriculum, fraction)

    def loss(self, model, batch: dict[str, torch.Tensor]):
        if self.eos_id is None:
            raise RuntimeError("set_tokenizer first: documents are cut at EOS")
        x0 = documents(batch["input_ids"], self.eos_id, model.config.ignore_id)
        t = antithetic_times(len(x0), 0.0, device=x0.device)
        metrics = denoising_metrics(model, x0, t, self.k)
        total, count = metrics["loss"]
        loss = total / count
        metrics["loss"] = (loss.detach() * count, count)
        one = torch.ones((), device=x0.device)
        metrics["k"] = (one * self.k, one)
        return loss, metrics
