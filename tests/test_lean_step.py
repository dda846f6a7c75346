"""The lean single-token decoding step against the modules' own `decode`, for every architecture option a softmax
model can have, batch 1 and left-padded batches; and weight-only low precision against its dequantised weights."""

import pytest
import torch

from picolm.config import ModelConfig
from picolm.models import linear
from picolm.models.gpt import GPT
from picolm.models.low_precision import (
    INT8_KERNEL_WIDTH,
    BFloat16Linear,
    Int8Linear,
    with_weights_in,
)
from picolm.models.masks import padding_mask
from operations import OperationCount

ARCHITECTURES = [
    dict(position="learned"),
    dict(position="rope"),
    dict(position="none"),
    dict(position="rope", mlp="swiglu", norm="rmsnorm", bias=False),
    dict(position="learned", differential=True),
    dict(position="rope", differential=True, tie_weights=False),
]


def model_with(**overrides) -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(**{**dict(n_layer=2, n_head=4, n_embd=32, block_size=40, vocab_size=97), **overrides})
    model = GPT(config)
    with torch.no_grad():  # larger weights than at initialisation, so every part of the step matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def step_by_step(model, tokens: torch.Tensor, prefill: int, lean: bool, positions=None, visible=None):
    """Logits after each token from `prefill` on, by the lean step or by the modules' decode."""
    cache = model.new_cache(tokens.shape[0])
    mask = None if visible is None else padding_mask(visible[:, :prefill])
    logits = [model.decode(tokens[:, :prefill], cache, None if positions is None else positions[:, :prefill], mask)]
    for t in range(prefill, tokens.shape[1]):
        where = None if positions is None else positions[:, t]
        if lean:
            logits.append(model.step(tokens[:, t], cache, where, visible))
        else:
            logits.append(model.decode(tokens[:, t:t + 1], cache, None if where is None else where[:, None],
                                       None if visible is None else visible[:, None, None, :t + 1]))
    return torch.stack(logits, dim=1)


PRODUCTS = {"oneDNN": {"mkldnn._linear_pointwise"}, "transposed": {"aten.addmm", "aten.mm"}}


@pytest.fixture(params=sorted(PRODUCTS))
def products(request, monkeypatch):
    """The CPU products the lean step uses: oneDNN's on packed weights where PyTorch has oneDNN, else by transposed
    copies of the weights; returns the names of the operations that do those products."""
    if request.param == "oneDNN" and not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch has no oneDNN")
    if request.param == "transposed":
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    else:  # these small models' products would not be worth packing
        monkeypatch.setattr(linear, "worth_packing", lambda weight, rows: True)
    return PRODUCTS[request.param]


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items()))
def test_the_lean_step_computes_what_the_modules_compute(architecture, products):
    model = model_with(**architecture)
    tokens = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        cache = model.new_cache(1)
        model.decode(tokens[:, :6], cache)
        with OperationCount() as operations:
            model.step(tokens[:, 6], cache)
        assert cache.lean_step is not None  # the lean step, not the modules, took that token
        used = operations.names & set.union(*PRODUCTS.values())
        assert used and used <= products  # these products, and only these
        lean = step_by_step(model, tokens, 6, lean=True)
        modules = step_by_step(model, tokens, 6, lean=False)
        full = model(tokens)[:, 5:]
    torch.testing.assert_close(lean, modules, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lean, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items()))
def test_left_padded_rows_step_as_they_would_alone(architecture):
    model = model_with(**architecture)
    generator = torch.Generator().manual_seed(2)
    pad = torch.tensor([0, 3, 5])
    tokens = torch.randint(1, 97, (3, 24), generator=generator)
    real = torch.arange(40) >= pad[:, None]
    positions = (real.long().cumsum(-1) - 1).clamp(min=0)[:, :24]
    with torch.inference_mode():
        batch = step_by_step(model, tokens, 8, lean=True, positions=positions, visible=real)
        for row in range(3):
            alone = step_by_step(model, tokens[row:row + 1, pad[row]:], 8 - int(pad[row]), lean=True)
            torch.testing.assert_close(batch[row], alone[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("position, per_layer", [("learned", 16), ("rope", 20)])
def test_the_lean_step_runs_few_operations_per_token(position, per_layer):
    """At batch 1 each operation costs about as much as the token's products (docs/BENCHMARKS.md): a regression here
    is a slowdown that no timing-free test would see otherwise."""
    model = model_with(position=position, n_layer=4)
    counts = {}
    with torch.inference_mode():
        for lean in (True, False):
            cache = model.new_cache(1)
            model.decode(torch.tensor([[1, 2, 3]]), cache)
            model.step(torch.tensor([4]), cache)  # the first step makes the lean step; the next ones reuse it
            with OperationCount() as operations:
                model.step(torch.tensor([5]), cache) if lean else model.decode(torch.tensor([[5]]), cache)
            counts[lean] = operations.count
    assert counts[True] <= 4 * per_layer + 8
    assert counts[True] < counts[False] / 2


def test_layers_carrying_lora_adapters_step_with_their_adapters():
    from picolm.config import LoraConfig
    from picolm.interop.lora import add_adapters

    model = add_adapters(model_with(position="rope"), LoraConfig(rank=4, alpha=8))
    with torch.no_grad():  # adapters that change the output (peft starts B at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p))
    model.eval()
    tokens = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        torch.testing.assert_close(step_by_step(model, tokens, 4, lean=True), model(tokens)[:, 3:],
                                   atol=1e-4, rtol=1e-4)


def test_linear_attention_steps_through_its_recurrent_state():
    model = model_with(attention="linear", position="rope")
    tokens = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert not model.new_cache(2).steps_lean
        torch.testing.assert_close(step_by_step(model, tokens, 5, lean=True), model(tokens)[:, 4:],
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", [BFloat16Linear, Int8Linear])
@pytest.mark.parametrize("width", [64, 40])  # 40: not a width the int8 CPU kernel takes, so it dequantises
def test_low_precision_layers_multiply_by_their_stored_weights(kind, width):
    torch.manual_seed(0)
    linear = torch.nn.Linear(width, 48)
    layer = kind(linear)
    x = torch.randn(5, width)
    stored = layer.weight
    assert stored.dtype == torch.float32 and stored.shape == linear.weight.shape
    # the stored weights are the float32 ones to the format's precision: bfloat16 has 8 significant bits; int8 is
    # within half a step (the row's largest / 254, its scale rounded to bfloat16: 2**-9 more at most)
    tolerance = linear.weight.abs().amax(1, keepdim=True) / 254 * (1 + 2**-8) if kind is Int8Linear \
        else linear.weight.abs() / 256
    assert ((stored - linear.weight).abs() <= tolerance * 1.0001 + 1e-8).all()
    expected = x @ stored.T + linear.bias
    torch.testing.assert_close(layer(x), expected, atol=0.05, rtol=0.02)  # bfloat16 activations in the product
    if kind is Int8Linear:
        assert layer.fits_kernel == (width % INT8_KERNEL_WIDTH == 0)


@pytest.mark.parametrize("rows", [1, 8])
def test_bfloat16_products_made_for_a_step_are_the_layers_own(rows, products):
    torch.manual_seed(0)
    layer = BFloat16Linear(torch.nn.Linear(64, 48))
    x = torch.randn(rows, 64)
    with OperationCount() as operations:
        fast = layer.product_for(rows)(x)
    assert fast.dtype == torch.bfloat16
    assert ("mkldnn._linear_pointwise" in operations.names) == (products == PRODUCTS["oneDNN"])
    torch.testing.assert_close(fast, layer.product(x), atol=1e-6, rtol=2**-7)  # one bfloat16 rounding at most


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_a_low_precision_model_decodes_what_its_forward_predicts(dtype):
    model = with_weights_in(model_with(position="rope", n_embd=64), dtype)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert model.wte.weight.dtype == torch.float32
    tokens = torch.randint(0, 97, (1, 24), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        torch.testing.assert_close(step_by_step(model, tokens, 4, lean=True),
                                   step_by_step(model, tokens, 4, lean=False), atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(step_by_step(model, tokens, 4, lean=True), model(tokens)[:, 3:],
                                   atol=5e-2, rtol=5e-2)


def test_float32_leaves_the_model_as_it_is():
    model = model_with()
    before = {name: p.clone() for name, p in model.state_dict().items()}
    assert with_weights_in(model, "float32") is model
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())


@pytest.mark.parametrize("shape, rows, packed", [
    ((512, 128), 1, False), ((768, 256), 1, False), ((1536, 384), 1, True), ((3072, 768), 1, True),
    ((128, 128), 8, False), ((256, 256), 8, False), ((384, 384), 8, True), ((768, 256), 2, True)])
def test_float32_products_are_packed_where_that_was_measured_faster(shape, rows, packed):
    """oneDNN's calls cost more than MKL's and its products less (docs/BENCHMARKS.md): small products stay MKL's."""
    weight = torch.zeros(shape)
    assert linear.worth_packing(weight, rows) == packed
    if torch.backends.mkldnn.is_available():
        assert (linear.packed_product(weight, None, rows) is not None) == packed
        assert linear.packed_product(weight.bfloat16(), None, rows) is not None  # bfloat16 always: F.linear's is slower
