"""Shared helpers for benchmarks: interleaved timing and the machine's float32 matmul rate."""

from __future__ import annotations

import statistics
import time

import torch


def matmul_flops_per_second(size: int = 2048, repeats: int = 10) -> float:
    """The float32 rate `torch.mm` reaches on square matrices: the peer for model FLOPs utilisation."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def time_per_call(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def interleaved(contenders: dict, rounds: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each contender, measured in alternating rounds so machine noise hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for name, fn in contenders.items():  # warm every contender before the first timed round
        time_per_call(fn, repeats=1, warmup=2)
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(time_per_call(fn, repeats, warmup=0))
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def linear_products(model, tokens: int):
    """A function that runs the blocks' matrix-vector products (every linear layer but the head, float32, weights
    pre-transposed) for `tokens` tokens and nothing else: the arithmetic ceiling of batch-1 decoding."""
    layers = [(m.weight.t().contiguous(), m.bias, torch.zeros(1, m.in_features)) for m in model.modules()
              if isinstance(m, torch.nn.Linear) and m is not model.lm_head]

    def products() -> None:
        with torch.inference_mode():
            for _ in range(tokens):
                for weight, bias, x in layers:
                    torch.mm(x, weight) if bias is None else torch.addmm(bias, x, weight)

    return products


def generation_models():
    """The generation benchmarks' GPT (L4 H4 d256, learned positions, vocabulary 512, seed 0) and its
    `transformers` GPT2LMHeadModel twin on the same weights, offline and quiet."""
    import os
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    from picolm.config import ModelConfig
    from picolm.interop.convert import to_gpt2
    from picolm.models.gpt import GPT

    hf_logging.set_verbosity_error()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=512,
                            position="learned")).eval()
    return model, to_gpt2(model)


def training_step(model, batch_size: int, lr: float = 1e-4):
    """One picolm training step on a fixed random batch (next-token loss, clipping, the AdamW step): what the
    throughput benchmarks time."""
    from picolm.config import TrainConfig
    from picolm.methods.next_token import NextToken
    from picolm.train.optim import build_optimizers

    optimizers = build_optimizers(model, TrainConfig(lr=lr), "cpu")
    objective = NextToken()
    x = torch.randint(0, model.config.vocab_size, (batch_size, model.config.block_size + 1))
    batch = {"input_ids": x[:, :-1], "targets": x[:, 1:]}

    def step() -> None:
        loss, _ = objective.loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step
