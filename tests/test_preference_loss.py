"""DPO-family losses against TRL: picolm's `preference_loss` and TRL's own `DPOTrainer` code on the same
random log-probabilities (float64), for several seeds, betas and label smoothings.

TRL 1.16 has no `dpo_loss` method: the losses are computed inline in `DPOTrainer._compute_loss(model, inputs,
return_outputs)`, between a model forward and the metric logging. We run that real method unbound, on
`types.SimpleNamespace` stand-ins for the trainer (only the attributes it reads), for the accelerator (identity
gathers on CPU) and for the model: a callable returning TRL's own `FusedCausalLMOutput` whose per-token
log-probabilities sum, over the completion tokens, to the log-probability we chose (zero where the label is -100,
as TRL's fused LM head gives). Reference log-probabilities go in as `ref_chosen_logps`/`ref_rejected_logps`, the
`precompute_ref_log_probs` path, and the batch itself comes from TRL's `DataCollatorForPreference`. `_compute_loss`
returns only the batch mean, so per-pair losses come from one-pair batches; the rewards come from the
`rewards/chosen` and `rewards/rejected` metrics it logs.

What TRL 1.16 does differently from picolm, checked here rather than papered over:
- `sigmoid` ignores `label_smoothing` (TRL keeps it for `robust`, `exo_pair`, `aot*` only). The conservative-DPO
  expression picolm uses for label_smoothing > 0 is in TRL's `aot` branch, which for one pair is exactly cDPO.
- `ipo` divides each sequence's log-ratio by its number of completion tokens inside the loss; picolm leaves that to
  the caller, so it matches when given length-normalised log-probabilities. The rewards stay un-normalised in both.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")
from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer  # noqa: E402  (slow import, once)
from trl.trainer.utils import FusedCausalLMOutput  # noqa: E402

from picolm.methods.preference import preference_loss  # noqa: E402

SEEDS = (0, 1, 2)
BETAS = (0.05, 0.1, 0.5, 1.0)
PAIRS = 8
PROMPT_LEN = 3
ATOL = 1e-6


class FakeModel:
    """Stands in for a model patched with TRL's fused LM head: `model(..., labels=..., fused_lm_head=True)` gives
    per-token log-probabilities of shape (batch, seq_len - 1), zero where the next label is -100."""

    training = True

    def __init__(self, sequence_logps: torch.Tensor):
        self.sequence_logps = sequence_logps  # (2 * pairs,): chosen rows then rejected rows

    def __call__(self, input_ids, attention_mask, labels, fused_lm_head, use_cache=False):
        assert fused_lm_head
        mask = labels[:, 1:] != -100
        per_token = mask * (self.sequence_logps / mask.sum(dim=1)).unsqueeze(1)
        zeros = torch.zeros_like(per_token)
        return FusedCausalLMOutput(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                                   is_top1=torch.zeros_like(mask))


def fake_trainer(loss_type: str, beta: float, label_smoothing: float) -> SimpleNamespace:
    """Just the attributes `DPOTrainer._compute_loss` reads, as `DPOTrainer.__init__` sets them from a DPOConfig
    with defaults otherwise (reverse-KL, no LD-DPO, no WPO weighting, no MoE aux loss)."""
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t)
    return SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=accelerator, args=SimpleNamespace(),
        beta=beta, label_smoothing=label_smoothing, loss_types=[loss_type], loss_weights=[1.0],
        precompute_ref_logps=True, ld_alpha=None, f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5,
        use_weighting=False, aux_loss_enabled=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1)


def trl_batch(loss_type, beta, label_smoothing, pc, pr, rc, rr, nc, nr):
    """TRL's batch-mean loss and its logged mean rewards for the pairs given (policy/reference chosen/rejected
    summed log-probabilities, and completion lengths in tokens)."""
    examples = [{"prompt_ids": [1] * PROMPT_LEN, "chosen_ids": [2] * int(c), "rejected_ids": [3] * int(r)}
                for c, r in zip(nc, nr)]
    inputs = DataCollatorForPreference(pad_token_id=0)(examples)
    inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = rc, rr  # float64, not the collator's float32
    trainer = fake_trainer(loss_type, beta, label_smoothing)
    loss = DPOTrainer._compute_loss(trainer, FakeModel(torch.cat([pc, pr])), inputs, return_outputs=False)
    metrics = trainer._metrics["train"]
    return loss, metrics["rewards/chosen"][-1], metrics["rewards/rejected"][-1]


def trl_per_pair(loss_type, beta, label_smoothing, pc, pr, rc, rr, nc, nr):
    """Per-pair losses and rewards from TRL, one pair per `_compute_loss` call."""
    rows = [trl_batch(loss_type, beta, label_smoothing, pc[i:i + 1], pr[i:i + 1], rc[i:i + 1], rr[i:i + 1],
                      nc[i:i + 1], nr[i:i + 1]) for i in range(len(pc))]
    losses, chosen, rejected = zip(*rows)
    return torch.stack(losses), torch.tensor(chosen, dtype=torch.float64), torch.tensor(rejected, dtype=torch.float64)


def random_logps(seed: int, lengths: bool = False):
    """Summed log-probabilities as a model would give them (negative, tens to hundreds of nats), the reference near
    the policy so that beta * margin spans both saturated and linear parts of each loss; completion lengths 1..24 when
    `lengths`, else 1."""
    g = torch.Generator().manual_seed(seed)
    pc = -torch.empty(PAIRS, dtype=torch.float64).uniform_(5.0, 200.0, generator=g)
    pr = -torch.empty(PAIRS, dtype=torch.float64).uniform_(5.0, 200.0, generator=g)
    rc = pc + 6.0 * torch.randn(PAIRS, dtype=torch.float64, generator=g)
    rr = pr + 6.0 * torch.randn(PAIRS, dtype=torch.float64, generator=g)
    if lengths:
        nc, nr = (torch.randint(1, 25, (PAIRS,), generator=g) for _ in range(2))
    else:
        nc = nr = torch.ones(PAIRS, dtype=torch.long)
    return pc, pr, rc, rr, nc, nr


def close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("seed", SEEDS)
def test_matches_trl_per_pair(loss_type, beta, seed):
    pc, pr, rc, rr, nc, nr = random_logps(seed)
    losses, chosen, rejected = preference_loss(pc, pr, rc, rr, loss_type=loss_type, beta=beta)
    trl_losses, trl_chosen, trl_rejected = trl_per_pair(loss_type, beta, 0.0, pc, pr, rc, rr, nc, nr)
    close(losses, trl_losses)
    close(chosen, trl_chosen)
    close(rejected, trl_rejected)
    batch_loss, mean_chosen, mean_rejected = trl_batch(loss_type, beta, 0.0, pc, pr, rc, rr, nc, nr)
    close(losses.mean(), batch_loss)
    close(chosen.mean().item(), mean_chosen)
    close(rejected.mean().item(), mean_rejected)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("seed", SEEDS)
def test_ipo_matches_trl_with_length_normalised_logps(beta, seed):
    """TRL's IPO divides each log-ratio by its completion's token count inside the loss; picolm's IPO is the same
    formula on log-probabilities the caller has averaged per token. Rewards are un-normalised in both."""
    pc, pr, rc, rr, nc, nr = random_logps(seed, lengths=True)
    assert (nc != nr).any()
    losses, _, _ = preference_loss(pc / nc, pr / nr, rc / nc, rr / nr, loss_type="ipo", beta=beta)
    _, chosen, rejected = preference_loss(pc, pr, rc, rr, loss_type="ipo", beta=beta)
    trl_losses, trl_chosen, trl_rejected = trl_per_pair("ipo", beta, 0.0, pc, pr, rc, rr, nc, nr)
    close(losses, trl_losses)
    close(chosen, trl_chosen)
    close(rejected, trl_rejected)
    # and the summed log-probabilities alone do not give TRL's IPO once lengths differ
    unnormalised, _, _ = preference_loss(pc, pr, rc, rr, loss_type="ipo", beta=beta)
    assert not torch.allclose(unnormalised, trl_losses, atol=ATOL, rtol=0)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge"])
@pytest.mark.parametrize("seed", SEEDS)
def test_sigmoid_and_hinge_ignore_completion_lengths_like_trl(loss_type, seed):
    pc, pr, rc, rr, nc, nr = random_logps(seed, lengths=True)
    losses, chosen, rejected = preference_loss(pc, pr, rc, rr, loss_type=loss_type, beta=0.1)
    trl_losses, trl_chosen, trl_rejected = trl_per_pair(loss_type, 0.1, 0.0, pc, pr, rc, rr, nc, nr)
    close(losses, trl_losses)
    close(chosen, trl_chosen)
    close(rejected, trl_rejected)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("seed", SEEDS)
def test_label_smoothed_sigmoid_matches_trl_cdpo_expression(label_smoothing, beta, seed):
    """TRL 1.16's only cDPO expression, -(1-eps) logsigmoid(beta d) - eps logsigmoid(-beta d), is in its `aot`
    branch, where d is the sorted-over-the-batch margin; with one pair per batch the sort is the identity and d is
    the DPO margin, so it is exactly picolm's label-smoothed sigmoid loss."""
    pc, pr, rc, rr, nc, nr = random_logps(seed)
    losses, chosen, rejected = preference_loss(pc, pr, rc, rr, loss_type="sigmoid", beta=beta,
                                               label_smoothing=label_smoothing)
    trl_losses, trl_chosen, trl_rejected = trl_per_pair("aot", beta, label_smoothing, pc, pr, rc, rr, nc, nr)
    close(losses, trl_losses)
    close(chosen, trl_chosen)
    close(rejected, trl_rejected)


@pytest.mark.parametrize("label_smoothing", [0.1, 0.3])
@pytest.mark.parametrize("seed", SEEDS)
def test_trl_sigmoid_ignores_label_smoothing(label_smoothing, seed):
    """Pins a known difference: TRL 1.16's `loss_type="sigmoid"` is `-logsigmoid(beta * delta)` whatever
    `label_smoothing` is (DPOConfig documents label_smoothing for robust and EXO only), while picolm's sigmoid with
    label_smoothing > 0 is conservative DPO. If TRL brings cDPO back to `sigmoid`, this test fails: then compare
    `sigmoid` directly."""
    pc, pr, rc, rr, nc, nr = random_logps(seed)
    trl_losses, _, _ = trl_per_pair("sigmoid", 0.1, label_smoothing, pc, pr, rc, rr, nc, nr)
    plain, _, _ = preference_loss(pc, pr, rc, rr, loss_type="sigmoid", beta=0.1)
    smoothed, _, _ = preference_loss(pc, pr, rc, rr, loss_type="sigmoid", beta=0.1, label_smoothing=label_smoothing)
    close(plain, trl_losses)
    assert not torch.allclose(smoothed, trl_losses, atol=ATOL, rtol=0)


def test_random_inputs_reach_both_sides_of_each_loss():
    """The oracle comparisons above are not all in one regime: hinge is zero for some pairs and positive for others,
    and sigmoid margins take both signs."""
    hinge, sig_margins = [], []
    for seed in SEEDS:
        pc, pr, rc, rr, _, _ = random_logps(seed)
        for beta in BETAS:
            hinge.append(preference_loss(pc, pr, rc, rr, loss_type="hinge", beta=beta)[0])
            _, chosen, rejected = preference_loss(pc, pr, rc, rr, beta=beta)
            sig_margins.append(chosen - rejected)
    hinge, sig_margins = torch.cat(hinge), torch.cat(sig_margins)
    assert (hinge == 0).any() and (hinge > 0).any()
    assert (sig_margins > 0).any() and (sig_margins < 0).any()
