"""Training throughput on CPU in float32: picolm against Hugging Face `GPT2LMHeadModel` (sdpa attention,
same shapes, same AdamW, same clipping), and model FLOPs utilisation against `torch.mm`, all in one run.

    python benchmarks/train_throughput.py [--rounds 5]
"""

from __future__ import annotations

import argparse

import torch

from common import interleaved, matmul_flops_per_second, median, training_step
from picolm.config import ModelConfig
from picolm.models.build import build_model

CONFIGS = {
    "L4 H4 d256 T256 B16 V4096": dict(n_layer=4, n_head=4, n_embd=256, block_size=256, batch=16, vocab=4096),
    "L4 H4 d128 T64 B12 V4096": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch=12, vocab=4096),
}


def picolm_step(shape: dict):
    config = ModelConfig(n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"],
                         block_size=shape["block_size"], vocab_size=shape["vocab"], position="learned")
    model = build_model(config)
    return model, training_step(model, shape["batch"])


def hf_step(shape: dict):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"],
                        n_positions=shape["block_size"], vocab_size=shape["vocab"], attn_pdrop=0.0,
                        resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    config._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    x = torch.randint(0, shape["vocab"], (shape["batch"], shape["block_size"] + 1))

    def step():
        loss = model(input_ids=x[:, :-1], labels=x[:, :-1]).loss  # HF shifts labels inside
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32")
    for name, shape in CONFIGS.items():
        model, ours = picolm_step(shape)
        rates = []
        contenders = {"picolm": ours, "matmul": lambda: rates.append(matmul_flops_per_second(repeats=5))}
        if name.startswith("L4 H4 d256"):
            contenders["transformers"] = hf_step(shape)
        times = interleaved(contenders, rounds=args.rounds, repeats=args.repeats)
        tokens = shape["batch"] * shape["block_size"]
        n = model.num_params()
        flops_per_token = 6 * n + 12 * shape["n_layer"] * shape["n_embd"] * shape["block_size"]
        ours_tps = tokens / median(times["picolm"])
        mfu = ours_tps * flops_per_token / median(rates)
        line = (f"{name}: picolm {ours_tps:,.0f} tok/s, MFU {mfu:.2f} "
                f"(matmul {median(rates) / 1e9:.0f} GFLOP/s, {n / 1e6:.2f}M params)")
        if "transformers" in times:
            hf_tps = tokens / median(times["transformers"])
            line += f"; transformers {hf_tps:,.0f} tok/s; ratio {ours_tps / hf_tps:.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
