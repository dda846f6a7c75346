"""The family interface: what the trainer, generate, eval, chat, compare and analyze ask instead of branching on
which method is running.

A family is one module in this folder and one line in the registry (picolm/methods/__init__.py). It owns its loss
or noise process (`objective`), its evaluation over batches and the names of its metrics (`evaluate`,
`metric_names`, `finish`), its config checks (`check`, `settings`), the vocabulary it needs (`vocabulary`), the data
tasks it accepts (`tasks`) and how its batches are made (`collate`, `predicts_next`), and its sampler (`sampler`).

Metrics travel as `{name: (sum, count)}` so that the trainer pools them over micro-batches and ranks and an
evaluation over batches; `finish` turns pooled values into the logged ones (perplexity from loss, say). Names with a
slash (`rewards/chosen`) are logged as they are, others under `train/` and `val/`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import replace

import torch

from picolm.config import Config, ModelConfig, ObjectiveConfig
from picolm.data.examples import PairExamples, SFTExamples, collate_canvas, collate_pairs, collate_sft
from picolm.errors import PicolmError

Metrics = dict[str, tuple[torch.Tensor, torch.Tensor]]
PERPLEXITY_CAP = 50.0  # exp(50): a loss beyond this is reported as this, not as an overflow


def perplexity(loss: float) -> float:
    return math.exp(min(loss, PERPLEXITY_CAP))


class Objective:
    """`loss(model, batch) -> (loss, metrics)`: all the trainer knows of what is learned. `metrics["loss"]` is
    (loss x count, count), where count is what the loss averages over (tokens, pairs): it weighs the micro-batch."""

    needs_starting_model = False  # a resumed run loads its starting model again (e.g. to copy a live reference)

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError

    def set_progress(self, fraction: float) -> None:
        """The share of training done, before each step (for curricula)."""

    def prepare(self, model, examples: dict[str, SFTExamples | PairExamples], batch_size: int, pad_id: int, device,
                autocast, log=print) -> None:
        """Work done once before training, with the starting model (e.g. a reference pass over the examples)."""


class Family:
    kind: str = ""  # the registry key: objective.kind
    title: str = ""  # what it is called in messages ("masked diffusion")
    tasks: tuple[str, ...] = ()  # the data it trains and evaluates on: text, sft (prompt/response), dpo (pairs)
    default: bool = False  # objective.kind auto picks it for its tasks when no family claims the starting model
    settings: tuple[str, ...] = ()  # the objective fields it reads; the others must keep their defaults
    sets: tuple[str, ...] = ()  # the model fields its `vocabulary` sets (extra token ids); never set by hand
    causal: bool = True  # the attention its models need: left to right, or both ways
    predicts_next: bool = True  # SFT rows as inputs and next-token targets (else whole rows: `collate`)
    reports_perplexity: bool = True  # exp(loss) is logged as perplexity
    aliases: dict[str, str] = {}  # metrics also logged under a name that says what they are for this family
    extra_metrics: tuple[str, ...] = ()  # its own evaluation metrics beside loss, perplexity and accuracy
    evaluations: tuple[str, ...] = ()  # the `picolm eval --metrics` it can give
    label: str | None = None  # run names' architecture part when the network's arch does not say it ("mdlm")
    note: str | None = None  # what its loss is, where that is not a plain likelihood (printed by eval, compare)
    sampler = None  # how its models write text (picolm/methods/sampling.py)

    # -- what the registry and set-up ask ---------------------------------------------------------------------
    def claims(self, model: ModelConfig) -> bool:
        """Whether `model` is one that only this family trains and samples (it carries the family's own ids)."""
        return False

    def starts_from(self, model: ModelConfig) -> bool:
        """Whether a run of this family may start from (`--init-from`) a model of this shape."""
        return True

    def check(self, config: Config, fresh: bool = True) -> list[str]:
        """Refuse settings that do not fit (one-line PicolmError naming the field); return notes worth printing.
        `fresh`: the model is built from the config (not taken from a checkpoint)."""
        if config.model.causal != self.causal:
            raise PicolmError(self.causal_message, field="model.causal")
        return []

    @property
    def causal_message(self) -> str:
        return (f"{self.title} needs a causal model: with causal false it would see its targets" if self.causal
                else f"{self.title} needs a bidirectional model: set model.causal false")

    def vocabulary(self, model: ModelConfig, tokenizer, objective: ObjectiveConfig) -> ModelConfig:
        """The model config with its vocabulary resolved for `tokenizer` (plus any ids the family adds)."""
        return replace(model, vocab_size=self._vocab_size(model, tokenizer.vocab_size, extra=0, what=""))

    @staticmethod
    def _vocab_size(model: ModelConfig, tokenizer_size: int, extra: int, what: str) -> int:
        if model.vocab_size == 0:
            return tokenizer_size + extra
        if model.vocab_size < tokenizer_size + extra:
            raise PicolmError(f"{model.vocab_size} is smaller than the tokenizer's {tokenizer_size}{what}: token ids "
                              "would fall outside the embedding table", field="model.vocab_size")
        return model.vocab_size

    def objective(self, config: Config, tokenizer, task: str) -> Objective:
        raise NotImplementedError

    def collate(self, examples: SFTExamples | PairExamples, indices: list[int], pad_id: int):
        """Packed pairs; SFT rows as inputs and next-token targets, or as whole rows (`predicts_next` False)."""
        if isinstance(examples, PairExamples):
            return collate_pairs(examples, indices, pad_id)
        return (collate_sft if self.predicts_next else collate_canvas)(examples, indices, pad_id)

    # -- evaluation -------------------------------------------------------------------------------------------
    def metric_names(self, task: str, kind_names: list[str] | None = None) -> list[str]:
        """The names `evaluate` reports (without the val/ prefix)."""
        return ["loss", "perplexity", "accuracy", *self.aliases.values(), *self.extra_metrics]

    @torch.no_grad()
    def evaluate(self, model, batches: Iterable[dict], objective: Objective, device="cpu", autocast=nullcontext,
                 kind_names: list[str] | None = None) -> dict[str, float]:
        """Pooled metrics of the objective over evaluation batches, in eval mode."""
        was_training = model.training
        model.eval()
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        try:
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast():
                    _, metrics = objective.loss(model, batch)
                for name, (total, count) in metrics.items():
                    sums[name] = sums.get(name, 0) + torch.as_tensor(total).double()
                    counts[name] = counts.get(name, 0) + count
        finally:
            model.train(was_training)
        return self.finish({name: float(sums[name] / max(int(counts[name]), 1)) for name in sums})

    def probe(self, model, objective: Objective, device="cpu", autocast=nullcontext) -> dict[str, float]:
        """Extra metrics logged, under their own names, at every evaluation of a training run (none by default)."""
        return {}

    def finish(self, metrics: dict[str, float]) -> dict[str, float]:
        """Pooled metrics (train or validation) with the ones derived from them: perplexity, and the aliases."""
        if self.reports_perplexity and "loss" in metrics:
            metrics["perplexity"] = perplexity(metrics["loss"])
        for name, alias in self.aliases.items():
            if name in metrics:
                metrics[alias] = metrics[name]
        return metrics
