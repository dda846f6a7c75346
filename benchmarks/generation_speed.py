"""Greedy decoding speed on CPU, tokens/s: picolm's KV-cache decoder against `transformers` `generate` on the
same weights (a picolm GPT with learned positions, L4 H4 d256, vocabulary 512, exported as GPT2LMHeadModel),
200 new tokens after a 16-token prompt, batch 1 and batch 8, rounds interleaved, medians reported.

Both decode exactly 200 tokens (no EOS), and the two greedy continuations are checked to be identical.

    python benchmarks/generation_speed.py [--rounds 5] [--new-tokens 200]
"""

from __future__ import annotations

import argparse

import torch

from common import generation_models, interleaved, median

PROMPT_TOKENS = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=200)
    args = parser.parse_args()
    from picolm.config import SamplingOptions
    from picolm.generate import generate_ids

    model, peer = generation_models()
    options = SamplingOptions(max_new_tokens=args.new_tokens, temperature=0.0)
    print(f"L4 H4 d256, vocabulary 512, {PROMPT_TOKENS}-token prompts, {args.new_tokens} new tokens, greedy; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for batch in (1, 8):
        prompts = torch.randint(0, 512, (batch, PROMPT_TOKENS), generator=torch.Generator().manual_seed(batch))

        def ours():
            return generate_ids(model, prompts.tolist(), options)

        def theirs():
            with torch.inference_mode():
                return peer.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                                     max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                     pad_token_id=0)[:, PROMPT_TOKENS:].tolist()

        if ours() != theirs():
            raise SystemExit(f"batch {batch}: picolm and transformers disagree on the greedy continuation")
        times = interleaved({"picolm": ours, "transformers": theirs}, rounds=args.rounds, repeats=1)
        rate = {name: batch * args.new_tokens / median(seconds) for name, seconds in times.items()}
        print(f"batch {batch}: picolm {rate['picolm']:8.0f} tok/s, transformers generate {rate['transformers']:7.0f} "
              f"tok/s -> picolm {rate['picolm'] / rate['transformers']:.1f}x")


if __name__ == "__main__":
    main()
