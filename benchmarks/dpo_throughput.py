"""DPO training throughput on CPU, pairs/s for one epoch: picolm's trainer against TRL's `DPOTrainer` on the same
GPT-2 shape (L4 H4 d256, vocabulary 512) and the same pairs (prompts of ~40 tokens, responses of ~80), measured
in the same run, rounds interleaved.

picolm is timed from the trainer's construction (tokenizing the pairs, computing the reference log-probabilities
once) to the end of `fit()`, including its final evaluation and checkpoint. TRL is timed two ways in its fair
setting (float32, no gradient checkpointing): over `trainer.train()` alone (its reference pass runs at every step;
loading and tokenizing are in its constructor, outside), and over the same whole job as picolm's (constructor,
training, an evaluation of the first batch of pairs, the model saved). A last run keeps TRL's defaults (bf16
autocast and gradient checkpointing), over `train()`.

    python benchmarks/dpo_throughput.py [--pairs 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch

from common import median
from trl_dpo_peer import load_tokenizer, make_pairs, make_peer_model, token_lengths, trl_dpo_pairs_per_second

BATCH = 8


def write_pair_data(pairs: list[dict], tokenizer_dir: str, out: Path) -> Path:
    """A picolm DPO data directory over the same pairs, with the peer's tokenizer."""
    from picolm.data.records import write_records
    from picolm.data.tokens import write_meta
    from picolm.tokenizer import hub_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", pairs), ("val", pairs[:BATCH]), ("test", pairs[:BATCH])):
        write_records(out / f"{split}.jsonl", rows)
    hub_tokenizer(tokenizer_dir).save(out / "tokenizer")
    write_meta(out, {"source": "benchmark", "task": "dpo", "tokenizer": "hf", "splits": {}})
    return out


def picolm_pairs_per_second(data_dir: Path, run_dir: Path, pairs: int) -> float:
    from picolm.config import build_config
    from picolm.train.trainer import Trainer

    config = build_config(None, {
        "model.n_layer": 4, "model.n_head": 4, "model.n_embd": 256, "model.block_size": 256,
        "model.position": "learned", "data.path": str(data_dir), "train.device": "cpu", "train.epochs": 1,
        "train.max_steps": None, "train.batch_size": BATCH, "train.lr": 5e-6, "train.eval_every": 10_000,
        "train.eval_batches": 1, "objective.kind": "dpo", "objective.beta": 0.1, "log.progress": False})
    start = time.perf_counter()
    Trainer(config, run_dir, log=lambda *args: None).fit()
    return pairs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--default-pairs", type=int, default=16, help="pairs for TRL's (slow) defaults run")
    args = parser.parse_args()
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    warnings.filterwarnings("ignore", message=".*checkpointing.* is deprecated", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, tokenizer_dir = make_peer_model(tmp)
        pairs = make_pairs(args.pairs, seed=0, tokenizer=load_tokenizer(tokenizer_dir))
        lengths = token_lengths(pairs, load_tokenizer(tokenizer_dir))
        print(f"{args.pairs} pairs, batch {BATCH}, one epoch; mean tokens: prompt {lengths['prompt']:.1f}, "
              f"chosen {lengths['chosen']:.1f}, rejected {lengths['rejected']:.1f}; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        data_dir = write_pair_data(pairs, tokenizer_dir, Path(tmp) / "data")
        ours, fair, job = [], [], []
        for round_ in range(args.rounds):
            ours.append(picolm_pairs_per_second(data_dir, Path(tmp) / f"run{round_}", args.pairs))
            fair.append(trl_dpo_pairs_per_second(pairs, model_dir, tokenizer_dir, fair=True,
                                                 batch_size=BATCH)["pairs_per_second"])
            job.append(trl_dpo_pairs_per_second(pairs, model_dir, tokenizer_dir, fair=True, batch_size=BATCH,
                                                whole_job=True)["pairs_per_second"])
            print(f"round {round_ + 1}: picolm {ours[-1]:.2f} pairs/s, TRL fair {fair[-1]:.2f} pairs/s over train(), "
                  f"{job[-1]:.2f} over the whole job")
        slow = trl_dpo_pairs_per_second(pairs[:args.default_pairs], model_dir, tokenizer_dir, fair=False,
                                        batch_size=BATCH)["pairs_per_second"]
    mine = median(ours)
    print(f"\npicolm (whole job): {mine:.2f} pairs/s")
    for name, rate in (("TRL DPOTrainer, float32, over train()", median(fair)),
                       ("TRL DPOTrainer, float32, whole job", median(job)),
                       ("TRL DPOTrainer defaults (bf16, checkpointing)", slow)):
        print(f"{name + ':':47s} {rate:6.2f} pairs/s  -> picolm {mine / rate:.2f}x")

if __name__ == "__main__":
    main()
