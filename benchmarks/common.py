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
