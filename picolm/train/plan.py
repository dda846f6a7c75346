"""`picolm train --dry-run`: what a run will need (parameters, memory, tokens and FLOPs per step) before anything is
allocated. The config is resolved as the trainer resolves it (picolm/train/setup.py `plan_config`); the model is built
on the meta device, so even `xl` costs no memory; activation memory is an estimate."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from picolm.config import Config

# activation elements kept for backward, per token, layer and unit of width (float32), measured on CPU with
# saved-tensor hooks (tests/test_plan.py checks the estimate against such a measurement)
SAVED_PER_TOKEN = {"gelu": 20, "swiglu": 24}
LINEAR_ATTENTION_EXTRA = 8  # chunked linear attention keeps its chunk states and feature maps
DROPOUT_EXTRA = 14  # dropout keeps a mask of each dropped activation
AUTOCAST_FRACTION = 0.6  # under bf16 autocast the matmul outputs are half as wide; norms and softmax stay float32
CHECKPOINTED_PER_TOKEN = 1  # with gradient checkpointing only each block's input is kept


@dataclass
class Plan:
    parameters: int
    embedding_parameters: int
    world_size: int
    micro_batch: int
    micro_batches: int
    tokens_per_step: int
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    flops_per_token: float

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.gradient_bytes + self.optimizer_bytes + self.activation_bytes


def meta_model(config: Config) -> torch.nn.Module:
    """The model the config describes, with no storage behind its parameters."""
    from picolm.models.build import build_model

    with torch.device("meta"):
        return build_model(config.model)


def estimate(config: Config, world_size: int = 1) -> Plan:
    """Memory per process: weights, gradients and optimizer state (divided over the ranks under fsdp), and the
    activations one micro-batch keeps for backward."""
    m, t = config.model, config.train
    model = meta_model(config)
    unique = {id(p): p for p in model.parameters()}.values()  # a tied head counts once
    parameters = sum(p.numel() for p in unique)
    embedding = model.wte.weight.numel() if hasattr(model, "wte") else 0
    muon = sum(p.numel() for name, p in model.named_parameters()
               if t.optimizer == "muon" and p.ndim == 2 and name.startswith("blocks."))
    shards = world_size if t.parallel == "fsdp" else 1
    per_rank = t.batch_size // world_size
    micro = min(t.micro_batch_size or per_rank, per_rank)
    tokens = micro * m.block_size
    if t.grad_checkpointing:
        per_token = CHECKPOINTED_PER_TOKEN
    else:
        per_token = SAVED_PER_TOKEN[m.mlp] + LINEAR_ATTENTION_EXTRA * (m.attention == "linear") \
            + DROPOUT_EXTRA * (m.dropout > 0)
    bf16 = t.precision in ("bf16", "fp16") or (t.precision == "auto" and torch.cuda.is_available())
    activations = tokens * m.n_layer * m.n_embd * 4 * per_token * (AUTOCAST_FRACTION if bf16 else 1)
    activations += 4 * (tokens * m.n_embd + m.vocab_size * m.n_embd)  # the fused head keeps its two gradients
    # 6 FLOPs per weight and token (forward and backward), plus attention's scores and weighted sums (Kaplan 2020)
    flops = 6 * (parameters - embedding) + 12 * m.n_layer * m.n_embd * m.block_size
    return Plan(parameters=parameters, embedding_parameters=embedding, world_size=world_size, micro_batch=micro,
                micro_batches=per_rank // micro, tokens_per_step=t.batch_size * m.block_size,
                weight_bytes=4 * parameters // shards, gradient_bytes=4 * parameters // shards,
                optimizer_bytes=4 * (2 * (parameters - muon) + muon) // shards, activation_bytes=int(activations),
                flops_per_token=flops)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def _flops(n: float) -> str:
    for unit in ("", "K", "M", "G", "T", "P"):
        if n < 1000 or unit == "P":
            return f"{n:.3g} {unit}FLOP"
        n /= 1000
    raise AssertionError


def describe(plan: Plan, config: Config) -> str:
    m, t = config.model, config.train
    sharded = t.parallel == "fsdp" and plan.world_size > 1
    lines = [
        f"model: {plan.parameters:,} parameters ({plan.parameters / 1e6:.1f}M; "
        f"{(plan.parameters - plan.embedding_parameters) / 1e6:.1f}M without the token embedding)",
        f"  {m.n_layer} layers x {m.n_embd} wide, {m.n_head} heads, {m.attention} attention, {m.position} positions,"
        f" {m.mlp}, context {m.block_size}, vocabulary {m.vocab_size:,}",
        f"batch: {t.batch_size} sequences x {m.block_size} tokens = {plan.tokens_per_step:,} tokens per step"
        f" over {plan.world_size} process{'es' if plan.world_size > 1 else ''}: {plan.micro_batches} micro-batch"
        f"{'es' if plan.micro_batches > 1 else ''} of {plan.micro_batch} per process",
        f"compute: {_flops(plan.flops_per_token)} per token, {_flops(plan.flops_per_token * plan.tokens_per_step)} "
        "per step",
        f"memory per process{' (fsdp: weights, gradients and optimizer sharded)' if sharded else ''}:",
        f"  weights      {_size(plan.weight_bytes):>11}  (float32)",
        f"  gradients    {_size(plan.gradient_bytes):>11}",
        f"  optimizer    {_size(plan.optimizer_bytes):>11}  ({t.optimizer})",
        f"  activations  {_size(plan.activation_bytes):>11}  (estimate for one micro-batch"
        f"{', gradient checkpointing' if t.grad_checkpointing else ''})",
        f"  total      ~ {_size(plan.total_bytes):>11}",
    ]
    if t.max_steps:
        total_flops = plan.flops_per_token * plan.tokens_per_step * t.max_steps
        lines.append(f"run: {t.max_steps:,} steps, {plan.tokens_per_step * t.max_steps:,} tokens, "
                     f"{_flops(total_flops)}")
    return "\n".join(lines)
