"""Objectives: `loss(model, batch) -> (loss, metrics)`. The trainer knows nothing else of what is learned.

Metrics are `{name: (sum, count)}` so the trainer can pool them over micro-batches and evaluation batches;
`loss` among them is the evaluation loss. Names with a slash (`rewards/chosen`) are logged as they are,
others as `train/<name>`.
"""

from __future__ import annotations

import copy

import torch

from picolm.config import ObjectiveConfig
from picolm.data.examples import in_order
from picolm.models.diffusion import antithetic_times, mask_positions, weighted_nll
from picolm.train.preference import preference_loss
from picolm.train.sdd_objective import SparseDistributionDiffusion

Metrics = dict[str, tuple[torch.Tensor, torch.Tensor]]


class NextToken:
    """Causal language modelling: predict token t+1 from tokens up to t."""

    needs_causal = True
    task = "text"
    reports_perplexity = True

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        loss, correct, counted = model(batch["input_ids"], targets=batch["targets"])  # via forward: DDP hooks run
        return loss, {"loss": (loss.detach() * counted, counted), "accuracy": (correct, counted)}


class MaskedResponse(NextToken):
    """SFT: next-token loss on the response tokens only (the batch's targets ignore the prompt and padding)."""

    task = "sft"


def sequence_log_probs(model, batch: dict[str, torch.Tensor], length_normalize: bool = False):
    """Summed (or mean) log-probabilities of each pair's chosen and rejected responses: two (B,) tensors."""
    token_log_probs = model(batch["input_ids"], batch["targets"], positions=batch["positions"],
                            attn_mask=batch["attn_mask"], predict_at=batch["predict_at"])
    sums = torch.zeros(len(batch["lengths"]), dtype=token_log_probs.dtype, device=token_log_probs.device)
    sums.index_add_(0, batch["sequence"], token_log_probs)
    if length_normalize:
        sums = sums / batch["lengths"]
    return sums[0::2], sums[1::2]


class Preference:
    """The DPO family against a frozen reference: its log-probabilities come precomputed in the batch, or from
    a live copy of the starting policy."""

    needs_causal = True
    task = "dpo"
    reports_perplexity = False

    def __init__(self, config: ObjectiveConfig):
        self.config = config
        self.reference_model = None

    def keep_reference(self, model) -> None:
        """Freeze a copy of the starting policy as the live reference."""
        self.reference_model = copy.deepcopy(model).eval().requires_grad_(False)

    def sequence_log_probs(self, model, batch):
        return sequence_log_probs(model, batch, self.length_normalize)

    @property
    def length_normalize(self) -> bool:
        """IPO compares mean log-probabilities, as TRL computes it."""
        return self.config.length_normalize or self.config.loss == "ipo"

    def reference_log_probs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        if "reference" in batch:
            return batch["reference"][:, 0], batch["reference"][:, 1]
        if self.reference_model is None:
            raise RuntimeError("no reference: precompute it or keep a live reference model")
        with torch.no_grad():
            return self.sequence_log_probs(self.reference_model, batch)

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        c = self.config
        policy_chosen, policy_rejected = self.sequence_log_probs(model, batch)
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


class MaskedDiffusion:
    """MDLM: the continuous-time NELBO per token of the batch's windows under the log-linear schedule; t is drawn
    antithetically across the batch and each token is masked with probability t."""

    needs_causal = False
    needs_bidirectional = True
    task = "text"
    reports_perplexity = False  # exp(loss) is an upper bound, reported by `evaluate_nelbo` as perplexity_bound

    def __init__(self, config: ObjectiveConfig):
        self.eps = config.eps

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        x0 = batch["input_ids"]
        t = antithetic_times(len(x0), self.eps, device=x0.device)
        masked = mask_positions(x0, t)
        count = torch.tensor(x0.numel(), device=x0.device)
        loss = weighted_nll(model, x0, t, masked) / count
        return loss, {"loss": (loss.detach() * count, count)}


PREFERENCE_METRICS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
                      "logps/chosen", "logps/rejected")


OBJECTIVES = {"next_token": NextToken, "sft": MaskedResponse, "dpo": Preference, "mdlm": MaskedDiffusion,
              "sdd": SparseDistributionDiffusion}  # by objective.kind; each class names the data `task` it trains on


def build_objective(kind: str, config: ObjectiveConfig):
    cls = OBJECTIVES[kind]
    return cls() if cls in (NextToken, MaskedResponse) else cls(config)


@torch.no_grad()
def precompute_reference(model, examples, batch_size: int, pad_id: int, device, autocast, length_normalize: bool):
    """The starting policy's log-probabilities of every pair's chosen and rejected responses, (N, 2) on the CPU."""
    was_training = model.training
    model.eval()
    pieces = []
    for batch in in_order(examples, batch_size, pad_id):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            chosen, rejected = sequence_log_probs(model, batch, length_normalize)
        pieces.append(torch.stack([chosen, rejected], dim=1).float().cpu())
    model.train(was_training)
    return torch.cat(pieces)


@torch.no_grad()
def evaluate_objective(objective, model, batches, device, autocast) -> dict[str, float]:
    """Pooled metrics of an objective over evaluation batches (and perplexity where it means something)."""
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            _, metrics = objective.loss(model, batch)
        for name, (total, count) in metrics.items():
            sums[name] = sums.get(name, 0) + total.double()
            counts[name] = counts.get(name, 0) + count
    model.train(was_training)
    result = {name: float(sums[name] / max(int(counts[name]), 1)) for name in sums}
    if objective.reports_perplexity and "loss" in result:
        result["perplexity"] = float(torch.tensor(min(result["loss"], 50.0)).exp())
    return result
