"""What weight-only bfloat16 and int8 cost and buy, on a trained model: held-out perplexity, greedy agreement with
float32 over 200 tokens, and batch-1 decoding speed, all against float32 measured in the same run.

The model is a run directory (default: the quickstart's pretraining, the built-in stories on the `tiny` preset with
RoPE, 300 steps, trained here into a temporary folder first: about 2 minutes). With --preset, an untrained model of
that size (vocabulary 2048, seed 0) is timed instead, speed only: where the weights outgrow the caches, the products
are bound by memory and a smaller weight pays most. Perplexity is `picolm eval`'s on the
test split; agreement is over --prompts test-split windows of 16 tokens, greedy, 200 new tokens each: the share of
new tokens that equal float32's at the same place, the mean count before the first difference, and the share of
continuations identical to the end. Speed: 200
greedy tokens after each of 8 prompts, the precisions interleaved in rounds (medians), beside the float32 products
alone (the arithmetic ceiling of `decode_floor.py`, for any architecture).

    python benchmarks/weight_precision.py [--run runs/stories-tiny] [--rounds 5] [--prompts 32]
    python benchmarks/weight_precision.py --preset large --rounds 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from common import interleaved, linear_products, median

NEW_TOKENS, PROMPT_TOKENS = 200, 16
DTYPES = ("float32", "bfloat16", "int8")


def pretrained_run(folder: Path) -> Path:
    """The quickstart's pretraining stage, trained from scratch into `folder`."""
    from picolm.cli import main

    data, run = folder / "stories", folder / "run"
    assert main(["prepare", "--source", "stories", "--out", str(data), "--vocab-size", "2048"]) == 0
    assert main(["train", "stories-tiny.yaml", "--data", str(data), "--out", str(run), "--log.progress", "false"]) == 0
    return run


def perplexity(run: Path, dtype: str) -> float:
    from picolm.eval.suite import EvalRequest, RunEvaluation
    from picolm.loading import load_model

    request = EvalRequest(metrics=("perplexity",), split="test")
    return RunEvaluation(load_model(run, dtype=dtype), request, torch.device("cpu")).run()["perplexity"]


def agreement(theirs: list[list[int]], ours: list[list[int]]) -> tuple[float, float, float]:
    """The share of tokens equal at the same place, the mean number of tokens before the first difference, and the
    share of continuations equal to the end. Greedy decoding amplifies any difference: once a near-tie flips, the
    rest of the continuation differs, so the first two measure different things."""
    same = sum(a == b for x, y in zip(theirs, ours) for a, b in zip(x, y))
    prefixes = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), min(len(x), len(y)))
                for x, y in zip(theirs, ours)]
    return (same / sum(map(len, theirs)), sum(prefixes) / len(prefixes),
            sum(x == y for x, y in zip(theirs, ours)) / len(theirs))


def speed_only(preset: str, rounds: int) -> None:
    from picolm.config import PRESETS, ModelConfig, SamplingOptions
    from picolm.generate import generate_ids
    from picolm.models.gpt import GPT
    from picolm.models.low_precision import with_weights_in

    torch.set_num_threads(2)
    config = ModelConfig(**PRESETS[preset], vocab_size=2048, position="rope")
    models = {}
    for dtype in DTYPES:
        torch.manual_seed(0)
        models[dtype] = with_weights_in(GPT(config).eval(), dtype)
    prompt = torch.randint(0, 2048, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0)).tolist()
    greedy = SamplingOptions(max_new_tokens=NEW_TOKENS, temperature=0.0)
    contenders = {dtype: (lambda m=model: generate_ids(m, prompt, greedy)) for dtype, model in models.items()}
    times = interleaved({**contenders, "products": linear_products(models["float32"], NEW_TOKENS)}, rounds, 1)
    ceiling = NEW_TOKENS / median(times.pop("products"))
    rate = {dtype: NEW_TOKENS / median(seconds) for dtype, seconds in times.items()}
    print(f"preset {preset} (untrained): L{config.n_layer} H{config.n_head} d{config.n_embd}, vocabulary 2048; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for dtype in DTYPES:
        print(f"{dtype:9s} {rate[dtype]:6.0f} tok/s  {rate[dtype] / rate['float32']:4.2f}x float32  "
              f"{rate[dtype] / ceiling:4.2f} of the float32 ceiling")
    print(f"float32 products alone {ceiling:6.0f} tok/s (the arithmetic ceiling)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="a trained run (default: train the quickstart's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--preset", default=None, help="time an untrained model of this size instead (speed only)")
    args = parser.parse_args()
    if args.preset:
        return speed_only(args.preset, args.rounds)
    from picolm.config import SamplingOptions
    from picolm.data.tokens import read_tokens
    from picolm.generate import generate_ids
    from picolm.loading import load_model

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        run = args.run or pretrained_run(Path(scratch))
        models = {dtype: load_model(run, dtype=dtype) for dtype in DTYPES}
        data = Path(models["float32"].checkpoint["train_config"]["data"]["path"])
        tokens = read_tokens(data / "test.bin")
        starts = torch.linspace(0, len(tokens) - PROMPT_TOKENS - 1, args.prompts).long().tolist()
        prompts = [tokens[s:s + PROMPT_TOKENS].tolist() for s in starts]
        greedy = SamplingOptions(max_new_tokens=NEW_TOKENS, temperature=0.0)
        continuations = {dtype: generate_ids(loaded.model, prompts, greedy) for dtype, loaded in models.items()}
        config = models["float32"].model.config
        print(f"{run}: L{config.n_layer} H{config.n_head} d{config.n_embd}, vocabulary {config.vocab_size}, "
              f"position {config.position}; torch {torch.__version__}, {torch.get_num_threads()} threads")
        contenders = {dtype: (lambda m=loaded.model: [generate_ids(m, [p], greedy) for p in prompts[:8]])
                      for dtype, loaded in models.items()}
        products = linear_products(models["float32"].model, tokens=8 * NEW_TOKENS)
        times = interleaved({**contenders, "products": products}, rounds=args.rounds, repeats=1)
        ceiling = 8 * NEW_TOKENS / median(times.pop("products"))
        rate = {dtype: 8 * NEW_TOKENS / median(seconds) for dtype, seconds in times.items()}
        for dtype in DTYPES:
            tokens_equal, prefix, rows_equal = agreement(continuations["float32"], continuations[dtype])
            print(f"{dtype:9s} perplexity {perplexity(run, dtype):8.4f}  greedy agreement {tokens_equal:.3f} of "
                  f"tokens, first difference after {prefix:5.1f} tokens, {rows_equal:.2f} of continuations equal  "
                  f"{rate[dtype]:6.0f} tok/s  "
                  f"{rate[dtype] / rate['float32']:4.2f}x float32  {rate[dtype] / ceiling:4.2f} of the float32 "
                  f"ceiling")
        print(f"float32 products alone {ceiling:6.0f} tok/s (the arithmetic ceiling)")


if __name__ == "__main__":
    main()
