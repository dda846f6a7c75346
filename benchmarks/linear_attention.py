"""Linear against softmax attention as the context grows: training-step time, the memory a generating model
holds (softmax: a KV cache that grows with the context; linear: a constant-size recurrent state per layer),
and the time of one decoding step at the end of a full context. Same model otherwise (L4 H4 d128, RoPE,
vocabulary 4096, batch 2), same AdamW; the two are timed in alternating rounds at each length.

The crossover is the context length from which a linear-attention training step is the faster one,
interpolated on log T between the measured lengths.

    python benchmarks/linear_attention.py [--lengths 256,1024,4096] [--rounds 3]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from common import interleaved, median
from picolm.config import ModelConfig, TrainConfig
from picolm.models.build import build_model
from picolm.methods.next_token import NextToken
from picolm.train.optim import build_optimizers

BATCH, VOCAB, DECODED = 2, 4096, 8


def make_model(attention: str, length: int):
    torch.manual_seed(0)
    return build_model(ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=length, vocab_size=VOCAB,
                                   position="rope", attention=attention))


def training_step(model, length: int):
    optimizers = build_optimizers(model, TrainConfig(lr=1e-4), "cpu")
    x = torch.randint(0, VOCAB, (BATCH, length + 1))
    batch = {"input_ids": x[:, :-1], "targets": x[:, 1:]}

    def step():
        loss, _ = NextToken().loss(model, batch)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def cache_bytes(cache) -> int:
    """Bytes of every tensor a decoding cache holds."""
    return sum(t.numel() * t.element_size() for layer in cache for t in vars(layer).values()
               if isinstance(t, torch.Tensor))


@torch.inference_mode()
def decoding(model, length: int, repeats: int = 3) -> tuple[int, float]:
    """The cache's size with the context full, and the seconds per token of decoding its last DECODED tokens
    (the best of `repeats`, each after an untimed prefill of the rest)."""
    prompt = torch.randint(0, VOCAB, (1, length - DECODED))
    tokens = torch.randint(0, VOCAB, (DECODED, 1, 1))
    best = math.inf
    for _ in range(repeats):
        cache = model.new_cache(1, length)
        model.decode(prompt, cache)
        start = time.perf_counter()
        for token in tokens:
            model.decode(token, cache)
        best = min(best, (time.perf_counter() - start) / DECODED)
    return cache_bytes(cache), best


def crossover(lengths: list[int], softmax: list[float], linear: list[float]) -> str:
    """The first length at which linear is faster, interpolated between the measured lengths on log T."""
    ratios = [math.log(s / lin) for s, lin in zip(softmax, linear)]
    if ratios[0] >= 0:
        return f"at or below {lengths[0]} (linear is already faster there)"
    for (t0, r0), (t1, r1) in zip(zip(lengths, ratios), zip(lengths[1:], ratios[1:])):
        if r1 >= 0:
            log_t = math.log(t0) + (math.log(t1) - math.log(t0)) * (-r0) / (r1 - r0)
            return f"about {math.exp(log_t):.0f} tokens (between {t0} and {t1})"
    return f"above {lengths[-1]} (softmax is still faster there)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="256,512,1024,2048,4096")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    lengths = [int(t) for t in args.lengths.split(",")]
    torch.set_num_threads(torch.get_num_threads())
    print(f"L4 H4 d128 RoPE, batch {BATCH}, vocabulary {VOCAB}, float32, {torch.get_num_threads()} threads\n")
    print("| T | softmax step ms | linear step ms | softmax / linear | softmax KV cache MB | linear state MB "
          "| softmax decode ms/token | linear decode ms/token |")
    print("|---|---|---|---|---|---|---|---|")
    step_times = {"softmax": [], "linear": []}
    for length in lengths:
        models = {kind: make_model(kind, length) for kind in step_times}
        steps = {kind: training_step(model, length) for kind, model in models.items()}
        times = interleaved(steps, rounds=args.rounds, repeats=1)
        for kind in step_times:
            step_times[kind].append(median(times[kind]))
        (soft_bytes, soft_decode), (lin_bytes, lin_decode) = (decoding(models[k].eval(), length) for k in step_times)
        soft, lin = step_times["softmax"][-1], step_times["linear"][-1]
        print(f"| {length} | {soft * 1e3:.0f} | {lin * 1e3:.0f} | {soft / lin:.2f}x | {soft_bytes / 2**20:.2f} "
              f"| {lin_bytes / 2**20:.3f} | {soft_decode * 1e3:.2f} | {lin_decode * 1e3:.2f} |", flush=True)
    print(f"\ntraining-step crossover: {crossover(lengths, step_times['softmax'], step_times['linear'])}")


if __name__ == "__main__":
    main()
