"""`picolm.models.linear.Linear`: nn.Linear's values and gradients, by oneDNN where it applies and by `F.linear`
everywhere else."""

import pytest
import torch
import torch.nn.functional as F

from picolm.models import linear
from picolm.models.linear import Linear
from operations import OperationCount

ONEDNN = "mkldnn._linear_pointwise"


def inputs(shape, contiguous=True):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    return x if contiguous else x.transpose(-1, -2).contiguous().transpose(-1, -2)


CASES = {  # input shape, bias, a contiguous input
    "rows": ((7, 16), True, True),
    "a batch of sequences": ((2, 5, 16), True, True),
    "no bias": ((2, 5, 16), False, True),
    "a transposed input": ((16, 16), True, False),
    "no rows": ((0, 16), True, True),
}


@pytest.mark.parametrize("case", CASES)
def test_values_and_gradients_are_nn_linear_ones(case, monkeypatch):
    shape, bias, contiguous = CASES[case]
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch has no oneDNN")
    monkeypatch.setattr(linear, "ONEDNN_FROM", 0)  # oneDNN's products however small, as a training batch's
    torch.manual_seed(0)
    layer = Linear(16, 12, bias=bias)
    x = inputs(shape, contiguous).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    with OperationCount() as operations:
        y = layer(x)
    assert ONEDNN in operations.names
    y_ref = F.linear(x_ref, layer.weight, layer.bias)
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-5)
    grad = torch.randn_like(y)
    expected = torch.autograd.grad(y_ref, [x_ref, layer.weight, *([layer.bias] if bias else [])], grad)
    got = torch.autograd.grad(y, [x, layer.weight, *([layer.bias] if bias else [])], grad)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


ELSEWHERE = {  # why F.linear takes the product: how to get there
    "a product too small to pay for oneDNN's call": lambda layer, x: (layer, x),
    "float64": lambda layer, x: (layer.double(), x.double()),
    "bfloat16 autocast": lambda layer, x: (layer, x),
    "no oneDNN": lambda layer, x: (layer, x),
    "a PyTorch without the oneDNN operations": lambda layer, x: (layer, x),
}


@pytest.mark.parametrize("where", ELSEWHERE)
def test_elsewhere_the_product_is_f_linear(where, monkeypatch):
    torch.manual_seed(0)
    layer, x = ELSEWHERE[where](Linear(16, 12), inputs((3, 16)))
    if where != "a product too small to pay for oneDNN's call":
        monkeypatch.setattr(linear, "ONEDNN_FROM", 0)
    if where == "no oneDNN":
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    if where == "a PyTorch without the oneDNN operations":
        monkeypatch.setattr(linear, "HAS_ONEDNN_LINEAR", False)
        assert linear.packed_product(layer.weight, layer.bias, 1) is None
    with OperationCount() as operations, torch.autocast("cpu", torch.bfloat16, enabled=where == "bfloat16 autocast"):
        y = layer(x)
        expected = F.linear(x, layer.weight, layer.bias)
    assert ONEDNN not in operations.names
    assert y.dtype == expected.dtype
    torch.testing.assert_close(y, expected, atol=0, rtol=0)


def test_a_training_batch_is_big_enough_for_onednn():
    layer, x = Linear(128, 512), inputs((12, 64, 128))  # the tiny preset's first MLP product, batch 12 x 64 tokens
    with OperationCount() as operations:
        layer(x)
    assert (ONEDNN in operations.names) == torch.backends.mkldnn.is_available()


def test_parameters_that_do_not_train_get_no_gradient(monkeypatch):
    monkeypatch.setattr(linear, "ONEDNN_FROM", 0)
    layer = Linear(16, 12).requires_grad_(False)
    x = inputs((3, 16)).requires_grad_()
    layer(x).sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(3, 16))
