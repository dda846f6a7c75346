"""One decoding step of a softmax-attention GPT, one token per row, without its modules.

At batch 1 on a CPU a token's matrix products take less time than the ~80 small tensor operations around them, each
costing microseconds of dispatch whatever its size (docs/BENCHMARKS.md, "Generation speed"). This step does the same
arithmetic as `GPT.decode` on a single token with as few operations as it can: the weights gathered once per cache
(on a CPU, packed for oneDNN or as contiguous transposed copies: the products run faster by them), the qkv product
written straight into the cache row (`LayerCache`), queries, keys and values read as strided views of the rows, no
masks unless a row is left-padded, the rotary angles looked up once per token for every layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from picolm.models.linear import packed_product
from picolm.models.low_precision import LowPrecisionLinear


def projection(linear: nn.Module, rows: int):
    """(x -> x W^T + b, (x, out) -> out = x W^T + b) for a float32 or a low-precision linear layer, for products of
    `rows` rows at a time; any other layer in its place (one carrying LoRA adapters while it trains) is called as it
    is."""
    if isinstance(linear, LowPrecisionLinear):
        return with_copy(linear.product_for(rows))
    if not isinstance(linear, nn.Linear):
        return with_copy(linear)
    weight, bias = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
    product = packed_product(weight, bias, rows)
    if product is not None:
        return with_copy(product)
    # Elsewhere on a CPU, a product by a contiguous (in, out) copy of the weights ran 1.3-1.6x faster over a whole
    # decode than by the (out, in) parameter itself: worth a copy of the weights for the cache's lifetime.
    transposed = weight.t().contiguous() if weight.device.type == "cpu" else weight.t()
    if bias is None:
        return (lambda x: torch.mm(x, transposed)), (lambda x, out: torch.mm(x, transposed, out=out))
    return (lambda x: torch.addmm(bias, x, transposed)), (lambda x, out: torch.addmm(bias, x, transposed, out=out))


def with_copy(product):
    """(product, (x, out) -> out = product(x)) for a product that cannot write into `out` itself."""
    return product, lambda x, out: out.copy_(product(x))


def normalization(norm: nn.Module):
    """x -> norm(x) with the module's own weights, called as a function."""
    if isinstance(norm, nn.RMSNorm):
        return lambda x: F.rms_norm(x, norm.normalized_shape, norm.weight, norm.eps)
    return lambda x: F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def feed_forward(mlp: nn.Module, rows: int):
    """x -> mlp(x) as functions: GELU (tanh) or SwiGLU, whichever the block has."""
    out, _ = projection(mlp.proj, rows)
    if hasattr(mlp, "gate_up"):
        gate_up, _ = projection(mlp.gate_up, rows)
        half = mlp.proj.in_features

        def swiglu(x):
            both = gate_up(x)
            return out(F.silu(both[:, :half]) * both[:, half:])
        return swiglu
    fc, _ = projection(mlp.fc, rows)
    return lambda x: out(F.gelu(fc(x), approximate="tanh"))


class LeanStep:
    """`step(tokens, cache, positions, visible)`: the logits after one more token per row, written into the cache.

    `positions` (B,) are the tokens' positions when rows count them differently (left padding), else None (every
    row at `cache.length`); `visible` (B, at least length + 1) is True where a row may attend, or None for all.
    Made for a batch of `rows` rows, which the products' weights are laid out for."""

    def __init__(self, model, rows: int):
        config = model.config
        self.n_head, self.width = config.n_head, config.n_embd
        self.differential = config.differential
        self.embedding = model.wte.weight
        self.learned = model.position.wpe.weight if hasattr(model.position, "wpe") else None
        self.rotary = None
        if hasattr(model.position, "inv_freq"):  # cosines and signed sines of every position, looked up per token
            angles = torch.arange(config.block_size, device=self.embedding.device).float()[:, None] \
                * model.position.inv_freq
            self.rotary = (torch.cat((angles.cos(), angles.cos()), -1), torch.cat((-angles.sin(), angles.sin()), -1))
        self.layers = [(normalization(b.ln_1), projection(b.attn.qkv, rows)[1], projection(b.attn.proj, rows)[0],
                        normalization(b.ln_2), feed_forward(b.mlp, rows)) for b in model.blocks]
        self.final_norm = normalization(model.ln_f)
        self.head = projection(model.lm_head, rows)[0]

    def __call__(self, tokens: torch.Tensor, cache, positions: torch.Tensor | None = None,
                 visible: torch.Tensor | None = None) -> torch.Tensor:
        length = cache.length
        seen = length + 1
        B, C, H = tokens.shape[0], self.width, self.n_head
        D = C // H
        x = token_embedding = F.embedding(tokens, self.embedding)
        if self.differential:  # e_t - e_{t-1}, with e_{-1} = 0 at each row's position 0
            before = cache.last_embedding[:, -1] if length > 0 else torch.zeros_like(x)
            if positions is not None:
                before = before.masked_fill((positions == 0)[:, None], 0.0)
            x = x - before
            cache.last_embedding = token_embedding[:, None]  # (B, 1, C), as `GPT.embed` keeps it
        if self.learned is not None:
            x = x + (self.learned[length] if positions is None else F.embedding(positions, self.learned))
        if self.rotary is not None:
            cos, sin = (table[length] if positions is None else table[positions][:, None] for table in self.rotary)
        mask = None if visible is None else visible[:, None, None, :seen]
        row_stride = B * 3 * C  # one position's row of the cache
        for (norm_1, qkv_into, out, norm_2, mlp), layer in zip(self.layers, cache):
            rows = layer.rows
            qkv_into(norm_1(x), rows[length])
            if self.rotary is not None:  # rotate this token's query and key in place: x cos + roll(x, D/2) sin
                qk = rows.as_strided((B, 2 * H, D), (3 * C, D, 1), length * row_stride)
                rolled = qk.roll(D // 2, -1)
                qk.mul_(cos).addcmul_(rolled, sin)
            q = rows.as_strided((B, H, 1, D), (3 * C, D, row_stride, 1), length * row_stride)
            k = rows.as_strided((B, H, seen, D), (3 * C, D, row_stride, 1), C)
            v = rows.as_strided((B, H, seen, D), (3 * C, D, row_stride, 1), 2 * C)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + out(y.reshape(B, C))
            x = x + mlp(norm_2(x))
            layer.length = seen
        if self.differential:
            x = x + token_embedding
        return self.head(self.final_norm(x))
