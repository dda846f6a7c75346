"""How fast can float32 batch-1 decoding go in eager PyTorch on this CPU? A hand-minimal decode loop (weights
pre-transposed, keys stored transposed, no modules, no masks, about 20 tensor ops per layer) against picolm's
`generate_ids` and `transformers` `generate`, all on the same weights (L4 H4 d256, vocabulary 512), 200 greedy
tokens after a 16-token prompt; the 16 matrix-vector products of one token timed alone as the arithmetic part, and
each decoder's rate as a share of that ceiling (the figure issue 17 sets targets in: ratios to `transformers` move
between machines of this kind, the share does not).

The hand loop is the floor for any eager-PyTorch decoder of this model: what it leaves above the 16 products is
per-op dispatch. It is a measurement, not a picolm code path.

    python benchmarks/decode_floor.py [--rounds 7]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import generation_models, interleaved, linear_products, median

NEW_TOKENS, PROMPT_TOKENS = 200, 16


def minimal_decoder(model):
    """A greedy decode function for a learned-position GELU GPT with every per-token cost but the math removed."""
    c = model.config
    C, H, D = c.n_embd, c.n_head, c.n_embd // c.n_head
    layers = [(b.ln_1.weight, b.ln_1.bias, b.attn.qkv.weight.t().contiguous(), b.attn.qkv.bias,
               b.attn.proj.weight.t().contiguous(), b.attn.proj.bias, b.ln_2.weight, b.ln_2.bias,
               b.mlp.fc.weight.t().contiguous(), b.mlp.fc.bias, b.mlp.proj.weight.t().contiguous(), b.mlp.proj.bias)
              for b in model.blocks]
    head, wte, wpe = model.lm_head.weight.t().contiguous(), model.wte.weight, model.position.wpe.weight
    scale = D ** -0.5

    @torch.inference_mode()
    def decode(prompt: torch.Tensor, n: int) -> list[int]:
        cache = model.new_cache(1, c.block_size)
        tok = model.decode(prompt, cache).argmax(-1)
        length = cache[0].length
        keys_t = [torch.zeros(H, D, c.block_size) for _ in layers]  # keys transposed: q @ K^T is one bmm
        values = [torch.zeros(H, c.block_size, D) for _ in layers]
        for layer in range(len(layers)):
            keys_t[layer][:, :, :length] = cache[layer].heads(1, 0, length)[0].transpose(1, 2)
            values[layer][:, :length] = cache[layer].heads(2, 0, length)[0]
        out = [tok]
        for _ in range(n - 1):
            x = wte[tok].add_(wpe[length])
            seen = length + 1
            for (l1w, l1b, qkv_w, qkv_b, pw, pb, l2w, l2b, fw, fb, f2w, f2b), kt, v in zip(layers, keys_t, values):
                qkv = torch.addmm(qkv_b, F.layer_norm(x, (C,), l1w, l1b), qkv_w).view(3, H, 1, D)
                kt[:, :, length] = qkv[1, :, 0]
                v[:, length] = qkv[2, :, 0]
                weights = torch.bmm(qkv[0], kt[:, :, :seen]).mul_(scale).softmax(-1)
                x = torch.addmm(pb, torch.bmm(weights, v[:, :seen]).view(1, C), pw).add_(x)
                hidden = F.gelu(torch.addmm(fb, F.layer_norm(x, (C,), l2w, l2b), fw), approximate="tanh")
                x = torch.addmm(f2b, hidden, f2w).add_(x)
            tok = torch.mm(F.layer_norm(x, (C,), model.ln_f.weight, model.ln_f.bias), head).argmax(-1)
            out.append(tok)
            length = seen
        return torch.cat(out).tolist()

    return decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    from picolm.config import SamplingOptions
    from picolm.generate import generate_ids

    model, peer = generation_models()
    prompt = torch.randint(0, 512, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(1))
    decode = minimal_decoder(model)
    options = SamplingOptions(max_new_tokens=NEW_TOKENS, temperature=0.0)

    def transformers_generate():
        with torch.inference_mode():
            return peer.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                 pad_token_id=0)[0, PROMPT_TOKENS:].tolist()

    contenders = {"transformers generate": transformers_generate,
                  "picolm generate_ids": lambda: generate_ids(model, prompt.tolist(), options)[0],
                  "minimal eager loop": lambda: decode(prompt, NEW_TOKENS)}
    reference = transformers_generate()
    for name, fn in contenders.items():
        if fn() != reference:
            raise SystemExit(f"{name} disagrees with transformers on the greedy continuation")
    products = {"16 products alone": linear_products(model, NEW_TOKENS)}  # timed as one call of 200 tokens
    times = interleaved({**contenders, **products}, rounds=args.rounds, repeats=1)
    ceiling = NEW_TOKENS / median(times.pop("16 products alone"))  # tokens/s if a token cost its products alone
    peer_rate = NEW_TOKENS / median(times["transformers generate"])
    print(f"L4 H4 d256, vocabulary 512, batch 1, {NEW_TOKENS} greedy tokens; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for name, seconds in times.items():
        rate = NEW_TOKENS / median(seconds)
        print(f"{name:22s} {rate:6.0f} tok/s  {1e3 / rate:5.2f} ms/token  {rate / peer_rate:4.1f}x transformers  "
              f"{rate / ceiling:4.2f} of the ceiling")
    print(f"{'16 products alone':22s} {ceiling:6.0f} tok/s  {1e3 / ceiling:5.2f} ms/token  "
          f"{ceiling / peer_rate:4.1f}x transformers  (the arithmetic ceiling)")


if __name__ == "__main__":
    main()
