"""Causal language modelling: predict token t+1 from tokens up to t. Its evaluation reports loss, perplexity and
next-token accuracy, and for numeric data the same per sequence kind (also after each sequence's first numbers,
where its rule is determined)."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from picolm.config import Config
from picolm.methods.family import Family, Metrics, Objective, perplexity
from picolm.methods.sampling import LeftToRight

WARMUP_NUMBERS = 3  # "after the first three numbers": the continuation is then determined
EVALUATIONS = ("perplexity", "accuracy", "kinds", "length", "preference", "generation", "format", "speed")


class NextToken(Objective):
    """The mean cross-entropy of the batch's targets (IGNORE_INDEX skipped: SFT's prompt and padding), through the
    fused head + cross-entropy inside `forward`, so DDP's hooks see it."""

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        loss, correct, counted = model(batch["input_ids"], targets=batch["targets"])
        return loss, {"loss": (loss.detach() * counted, counted), "accuracy": (correct, counted)}


def evaluation_metric_names(kind_names: list[str] | None) -> list[str]:
    """The metrics `evaluate_tokens` reports for data with these sequence kinds."""
    per_kind = [f"{metric}/{kind}" for kind in kind_names or [] for metric in
                ("loss", "accuracy", f"accuracy_after_{WARMUP_NUMBERS}")]
    return ["loss", "perplexity", "accuracy", *per_kind]


@torch.no_grad()
def evaluate_tokens(model, batches, kind_names: list[str] | None = None, device="cpu",
                    autocast=nullcontext) -> dict[str, float]:
    """Mean loss, perplexity and accuracy over evaluation windows (`window_batches`); per-kind loss and accuracies
    when the batches carry kinds (over the numbers of each kind; end-of-text tokens count in the overall figures
    only)."""
    was_training = model.training
    model.eval()
    loss_sum, correct_sum, count = 0.0, 0, 0
    per_kind = {}  # kind id -> [correct, total, correct after warmup, total after warmup, loss sum]
    try:
        for batch in batches:
            targets = batch["targets"].to(device)
            with autocast():
                logits = model(batch["input_ids"].to(device)).float()
            losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
            loss_sum += losses.sum().item()
            losses = losses.view(targets.shape).cpu().numpy()
            hits = (logits.argmax(-1) == targets).cpu().numpy()
            correct_sum += int(hits.sum())
            count += targets.numel()
            if "kinds" in batch:
                target_kind = batch["kinds"][:, 1:].numpy()
                target_position = batch["document_positions"][:, 1:].numpy()
                # the model knows where the document starts only if its opening EOS is inside the window
                in_view = target_position <= np.arange(targets.shape[1])
                after_warmup = (target_position >= WARMUP_NUMBERS) & in_view
                for k in np.unique(target_kind[target_kind >= 0]):
                    sel = target_kind == k
                    late = sel & after_warmup
                    tally = per_kind.setdefault(int(k), [0, 0, 0, 0, 0.0])
                    tally[0] += int(hits[sel].sum())
                    tally[1] += int(sel.sum())
                    tally[2] += int(hits[late].sum())
                    tally[3] += int(late.sum())
                    tally[4] += float(losses[sel].sum())
    finally:
        model.train(was_training)
    loss = loss_sum / max(count, 1)
    result = {"loss": loss, "perplexity": perplexity(loss), "accuracy": correct_sum / max(count, 1), "tokens": count}
    for k, (c, n, c_late, n_late, kind_loss) in sorted(per_kind.items()):
        name = kind_names[k] if kind_names else str(k)
        result[f"loss/{name}"] = kind_loss / max(n, 1)
        result[f"accuracy/{name}"] = c / max(n, 1)
        result[f"accuracy_after_{WARMUP_NUMBERS}/{name}"] = c_late / max(n_late, 1)
    return result


class NextTokenFamily(Family):
    kind = "next_token"
    title = "next-token training"
    tasks = ("text",)
    default = True
    evaluations = EVALUATIONS
    sampler = LeftToRight()

    def objective(self, config: Config, tokenizer, task: str) -> Objective:
        return NextToken()

    def metric_names(self, task: str, kind_names: list[str] | None = None) -> list[str]:
        return evaluation_metric_names(kind_names)

    def evaluate(self, model, batches, objective: Objective, device="cpu", autocast=nullcontext,
                 kind_names: list[str] | None = None) -> dict[str, float]:
        result = evaluate_tokens(model, batches, kind_names, device, autocast)
        result.pop("tokens")
        return result
