"""Optimizers (AdamW; Muon for 2-D hidden weights with AdamW for the rest) and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from picolm.config import TrainConfig


def newton_schulz(grad: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately orthogonalise a matrix (the quintic iteration of Muon, Jordan et al. 2024)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = grad.bfloat16() if grad.is_cuda else grad.float()
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.mT
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if transposed else x).to(grad.dtype)


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum whose update is orthogonalised; for 2-D weights only."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = newton_schulz(p.grad.lerp(buf, group["momentum"]))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * max(1.0, p.size(0) / p.size(1)) ** 0.5)


def _adamw(groups, config: TrainConfig, device_type: str) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
                             fused=device_type in ("cuda", "cpu"))


def build_optimizers(model: nn.Module, config: TrainConfig, device_type: str) -> list[torch.optim.Optimizer]:
    """AdamW with decay on matrices only; with `muon`, Muon takes the 2-D weights inside the blocks."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    muon_names = set()
    if config.optimizer == "muon":
        muon_names = {name for name, p in params.items() if p.ndim == 2 and name.startswith("blocks.")}
    decay = [p for name, p in params.items() if p.ndim >= 2 and name not in muon_names]
    no_decay = [p for p in params.values() if p.ndim < 2]
    optimizers: list[torch.optim.Optimizer] = [_adamw(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        config, device_type)]
    if muon_names:
        optimizers.append(Muon([params[n] for n in sorted(muon_names)], lr=config.muon_lr,
                               momentum=config.muon_momentum, weight_decay=config.weight_decay))
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["base_lr"] = group["lr"]
    return optimizers


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Restore moments and step counts, keeping the hyperparameters of the current config (a resumed
    run may change lr, weight decay, betas)."""
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, current in zip(optimizer.param_groups, settings):
        group.update(current)


def warmup_steps(config: TrainConfig, total_steps: int | None) -> int:
    if config.warmup_steps is not None:
        return config.warmup_steps
    return int(config.warmup_ratio * total_steps) if total_steps else 0


def lr_factor(step: int, warmup: int, progress: float, schedule: str, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine or linear decay to `min_ratio` as `progress` goes 0 -> 1, or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, max(0.0, progress))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
