"""Preference training (the DPO family): the losses on sequence log-probabilities, as in the papers and in TRL, the
frozen reference (precomputed once, or a live copy of the starting policy; for a model carrying LoRA adapters, the
model itself with its adapters off), and the reward metrics.

Each loss takes the summed (or length-normalised) log-probabilities of the chosen and rejected responses under
the policy and the frozen reference, and returns per-pair losses and the implicit rewards
beta * (log pi - log pi_ref).
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from picolm.config import Config, ObjectiveConfig, refuse_failed
from picolm.methods.family import Family, Metrics, Objective
from picolm.methods.sampling import LeftToRight
from picolm.methods.sequences import pair_log_probs, sequence_log_probs

LOSS_TYPES = ("sigmoid", "ipo", "hinge")
REFERENCES = ("precomputed", "live")
METRICS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen",
           "logps/rejected")


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


def adapter_layers(model) -> list:
    """The peft adapter layers (LoRA) of `model`, which peft marks with `peft_config`; none for a plain model."""
    if getattr(model, "peft_config", None) is None:
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [module for module in model.modules() if isinstance(module, BaseTunerLayer)]


@contextmanager
def base_weights(model):
    """`model` as it started: in eval mode, and, when it carries LoRA adapters, with them off (their weights are the
    only ones that train, so the rest is the starting policy). Afterwards as it was."""
    layers, was_training = adapter_layers(model), model.training
    model.eval()
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        model.train(was_training)


class Preference(Objective):
    """The DPO family against a frozen reference: its log-probabilities come precomputed in the batch, or from
    a live copy of the starting policy (the policy itself, adapters off, when only LoRA adapters train)."""

    def __init__(self, config: ObjectiveConfig):
        self.config = config
        self.reference_model = None
        self.needs_starting_model = config.reference == "live"  # a resumed run copies its start again

    @property
    def length_normalize(self) -> bool:
        """IPO compares mean log-probabilities, as TRL computes it."""
        return self.config.length_normalize or self.config.loss == "ipo"

    def prepare(self, model, examples, batch_size: int, pad_id: int, device, autocast, log=print) -> None:
        """A live reference: freeze a copy of the starting policy (a model with LoRA adapters is its own, with them
        off). Precomputed: the starting policy's log-probabilities of every pair, once (a resumed run has them from
        its checkpoint)."""
        if self.config.reference == "live":
            self.reference_model = model if adapter_layers(model) else \
                copy.deepcopy(model).eval().requires_grad_(False)
            return
        for pairs in examples.values():
            if pairs.reference is None:
                started = time.perf_counter()
                with base_weights(model):
                    pairs.reference = pair_log_probs(model, pairs, 2 * batch_size, pad_id, device, autocast,
                                                     self.length_normalize)
                log(f"reference log-probabilities of {len(pairs)} pairs in {time.perf_counter() - started:.1f} s")

    def reference_log_probs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        if "reference" in batch:
            return batch["reference"][:, 0], batch["reference"][:, 1]
        if self.reference_model is None:
            raise RuntimeError("no reference: precompute it or keep a live reference model")
        with torch.no_grad(), base_weights(self.reference_model) as reference:
            return sequence_log_probs(reference, batch, self.length_normalize)

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        c = self.config
        policy_chosen, policy_rejected = sequence_log_probs(model, batch, self.length_normalize)
        reference_chosen, reference_rejected = self.reference_log_probs(batch)
        losses, chosen_rewards, rejected_rewards = preference_loss(
            policy_chosen, policy_rejected, reference_chosen, reference_rejected, c.loss, c.beta, c.label_smoothing)
        n = torch.tensor(len(losses), device=losses.device)
        margins = chosen_rewards - rejected_rewards
        metrics = {
            "loss": (losses.detach().sum(), n),
            "rewards/chosen": (chosen_rewards.sum(), n),
            "rewards/rejected": (rejected_rewards.sum(), n),
            "rewards/accuracies": ((margins > 0).sum(), n),
            "rewards/margins": (margins.sum(), n),
            "logps/chosen": (policy_chosen.detach().sum(), n),
            "logps/rejected": (policy_rejected.detach().sum(), n),
        }
        return losses.mean(), metrics


class PreferenceFamily(Family):
    kind = "dpo"
    title = "preference training"
    tasks = ("dpo",)
    default = True
    settings = ("beta", "loss", "label_smoothing", "length_normalize", "reference")
    reports_perplexity = False
    evaluations = ("perplexity", "accuracy", "kinds", "length", "preference", "generation", "format", "speed")
    sampler = LeftToRight()

    def check(self, config: Config, fresh: bool = True) -> list[str]:
        super().check(config, fresh)
        o = config.objective
        checks = [
            (o.loss in LOSS_TYPES, "loss", f"must be one of {', '.join(LOSS_TYPES)}"),
            (o.beta > 0, "beta", "must be positive"),
            (0.0 <= o.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5)"),
            (o.reference in REFERENCES, "reference", f"must be one of {', '.join(REFERENCES)}"),
        ]
        refuse_failed(checks, "objective.")
        return []

    def objective(self, config: Config, tokenizer, task: str) -> Objective:
        return Preference(config.objective)

    def metric_names(self, task: str, kind_names=None) -> list[str]:
        return list(METRICS)
