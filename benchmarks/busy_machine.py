"""picolm's training throughput on a busy machine: one process alone against the same process sharing the CPU with
a second identical one, for several torch thread settings, in alternating rounds (medians).

Each process trains the quickstart's pretraining shape (tiny preset, RoPE, T 256, batch 16, vocabulary 2048) and
times a fixed number of steps; a process that finishes its timed steps keeps training until every process has
finished, so the load stays the same for the whole measurement. Sharing all cores with one equal process should
at worst halve a process's throughput ("proportional"); threads spinning against each other make it worse.

    python benchmarks/busy_machine.py [--settings default,1,GOMP_SPINCOUNT=300000] [--rounds 3] [--steps 8]

A setting is `default` (picolm's own: torch's thread count, the cores, and OpenMP's waiting threads asleep, as
picolm's training verbs set them), a thread count (torch.set_num_threads), or NAME=VALUE, an environment variable the
process starts with. GOMP_SPINCOUNT=300000 restores what torch does without picolm: each waiting thread spins
300,000 times (about 3 ms) before it sleeps.
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import subprocess
import sys
import time

from picolm.cli.common import threads_sleep_when_waiting

threads_sleep_when_waiting()  # before torch is imported, as picolm's training verbs do

WARMUP_STEPS = 3


def worker(setting: str, steps: int) -> None:
    """Train and time `steps` steps after a go line on stdin; print steps per second, then train on until stdin
    closes."""
    import torch

    from common import training_step
    from picolm.config import ModelConfig
    from picolm.models.build import build_model

    if setting.isdigit():
        torch.set_num_threads(int(setting))
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=256, vocab_size=2048,
                                    position="rope"))
    step = training_step(model, batch_size=16, lr=1e-3)
    for _ in range(WARMUP_STEPS):
        step()
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    print(steps / (time.perf_counter() - start), flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:  # keep the load on until told to stop
        step()


def spawn(setting: str, steps: int) -> subprocess.Popen:
    name, _, value = setting.partition("=")
    env = dict(os.environ, **{name: value}) if value else None
    return subprocess.Popen([sys.executable, __file__, "--worker", setting, "--steps", str(steps)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def measure(settings: list[str], steps: int) -> list[float]:
    """Steps per second of one process per setting, all of them timed together once every one is warm."""
    workers = [spawn(setting, steps) for setting in settings]
    for w in workers:
        assert w.stdout.readline().strip() == "ready"
    for w in workers:
        w.stdin.write("go\n")
        w.stdin.flush()
    results = [float(w.stdout.readline()) for w in workers]
    for w in workers:
        w.stdin.close()
        w.wait()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="default,1,GOMP_SPINCOUNT=300000",
                        help="thread settings to compare, by commas")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per process per measurement")
    parser.add_argument("--peer", default=None,
                        help="the sharing process's setting (default: the same as the measured one)")
    parser.add_argument("--alone-only", action="store_true", help="measure each setting alone, never shared")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args.worker, args.steps)
    settings = args.settings.split(",")
    alone: dict[str, list[float]] = {s: [] for s in settings}
    shared: dict[str, list[float]] = {s: [] for s in settings}
    for r in range(args.rounds):
        for s in settings:
            alone[s] += measure([s], args.steps)
            line = f"round {r + 1} {s}: alone {alone[s][-1]:.2f} steps/s"
            if not args.alone_only:
                peer = args.peer or s
                both = measure([s, peer], args.steps)
                shared[s] += both if peer == s else both[:1]
                line += f", shared {both[0]:.2f} (peer {peer}: {both[1]:.2f})"
            print(line, flush=True)
    report(settings, alone, shared, args)


def report(settings: list[str], alone: dict, shared: dict, args) -> None:
    base = max(max(values) for values in alone.values())  # the least disturbed round: the nearest to an idle machine
    print(f"\n{os.cpu_count()} cores; medians of {args.rounds} rounds, {args.steps} timed steps each; shared with "
          f"{args.peer or 'the same setting'}; proportional = half the best alone, {base / 2:.2f} steps/s")
    print("| setting | alone steps/s (best) | shared steps/s (each) | slowdown when shared | shared / proportional |")
    print("|---|---|---|---|---|")
    for s in settings:
        a = statistics.median(alone[s])
        b = statistics.median(shared[s]) if shared[s] else float("nan")
        print(f"| {s} | {a:.2f} ({max(alone[s]):.2f}) | {b:.2f} | {a / b:.2f}x | {b / (base / 2):.2f} |")


if __name__ == "__main__":
    main()
