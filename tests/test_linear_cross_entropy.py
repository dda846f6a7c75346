"""The fused head + cross-entropy against PyTorch's cross_entropy on materialised logits."""

import pytest
import torch
import torch.nn.functional as F

import picolm.models.linear_cross_entropy as lce
from picolm.data.examples import IGNORE_INDEX
from picolm.models.linear_cross_entropy import linear_cross_entropy


@pytest.mark.parametrize("chunk_elements", [7 * 70, 64 * 70, 1 << 22])  # several chunks with a ragged last one
def test_loss_and_gradients_match_cross_entropy(monkeypatch, chunk_elements):
    monkeypatch.setattr(lce, "CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    hidden = torch.randn(3, 50, 32, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(70, 32, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 70, (3, 50))
    targets[0, :9] = IGNORE_INDEX
    loss, correct, counted = linear_cross_entropy(hidden, weight, targets)
    (3 * loss).backward()
    ours = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logits = hidden @ weight.t()
    reference = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    (3 * reference).backward()
    assert loss.item() == pytest.approx(reference.item(), abs=1e-12)
    torch.testing.assert_close(ours[0], hidden.grad, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ours[1], weight.grad, atol=1e-12, rtol=1e-10)
    valid = targets != IGNORE_INDEX
    assert counted.item() == valid.sum().item()
    assert correct.item() == ((logits.argmax(-1) == targets) & valid).sum().item()


def test_float32_matches_within_float_precision():
    torch.manual_seed(0)
    hidden = torch.randn(256, 64, requires_grad=True)
    weight = torch.randn(500, 64, requires_grad=True)
    targets = torch.randint(0, 500, (256,))
    loss, _, _ = linear_cross_entropy(hidden, weight, targets)
    reference = F.cross_entropy(hidden @ weight.t(), targets)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)


def test_no_gradient_needed_in_evaluation():
    hidden, weight = torch.randn(10, 8), torch.randn(20, 8)
    with torch.no_grad():
        loss, _, _ = linear_cross_entropy(hidden, weight, torch.randint(0, 20, (10,)))
    assert torch.isfinite(loss)
