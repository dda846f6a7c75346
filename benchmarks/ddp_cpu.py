"""Data-parallel training on CPU: `torchrun --nproc_per_node 2 -m picolm train` (gloo) against one process with
the same global batch, on the same data and model, in alternating rounds. Each process of the pair gets
cores / 2 threads; the single process gets all the cores. Throughput is the run's `train/tokens_per_sec` averaged
over its logged steps after the first (which includes start-up); every run trains the same steps.

    python benchmarks/ddp_cpu.py [--rounds 2] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import median

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["--model.n_layer", "4", "--model.n_head", "4", "--model.n_embd", "256", "--model.block_size", "256",
         "--train.batch_size", "16", "--train.eval_every", "1000", "--train.eval_batches", "1", "--train.log_every",
         "5", "--train.device", "cpu", "--log.progress", "false", "--train.num_samples", "0"]


def run(data: Path, out: Path, steps: int, processes: int, *extra: str) -> float:
    cores = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // processes)), "PYTHONPATH": str(ROOT)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                str(processes)] if processes > 1 else [sys.executable]
    subprocess.run([*launcher, "-m", "picolm", "train", "--data", str(data), "--out", str(out), *MODEL,
                    "--train.max_steps", str(steps), *extra], check=True, env=env, capture_output=True, cwd=ROOT)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/tokens_per_sec"] for r in rows if "train/tokens_per_sec" in r][1:]
    return sum(rates) / len(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run([sys.executable, "-m", "picolm", "prepare", "--source", "stories", "--out", str(data),
                        "--vocab-size", "2048", "--num-sequences", "3000"], check=True, capture_output=True, cwd=ROOT)
        results = {"1 process": [], "2 processes, ddp": [], "2 processes, fsdp": []}
        for i in range(args.rounds):
            results["1 process"].append(run(data, Path(tmp) / f"one{i}", args.steps, 1))
            results["2 processes, ddp"].append(run(data, Path(tmp) / f"ddp{i}", args.steps, 2))
            results["2 processes, fsdp"].append(run(data, Path(tmp) / f"fsdp{i}", args.steps, 2,
                                                    "--train.parallel", "fsdp"))
    base = median(results["1 process"])
    print(f"L4 d256 T256, global batch 16, {args.steps} steps, {os.cpu_count()} cores, {args.rounds} rounds")
    for name, rates in results.items():
        print(f"{name:<20} {median(rates):>8,.0f} tok/s   {median(rates) / base:.2f}x")


if __name__ == "__main__":
    main()
