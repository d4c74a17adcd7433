"""Our losses equal TRL's (loss and gradients, fp64, within 1e-6) on identical inputs.

TRL computes most losses inline in its trainers; ``trl_reference.py`` runs
that trainer code on the per-token log-probs generated here (see its docstring).
Gradients are taken with respect to the per-token policy log-probs, i.e.
everything downstream of the model's forward.
"""
from __future__ import annotations

import pytest
import torch

from llmkit.align import dpo_loss, grpo_advantages, grpo_loss, jsd_loss, kto_loss, orpo_loss, simpo_loss
from llmkit.align.dpo import DPO_LOSSES
from llmkit.align.ops import masked_mean, masked_sum

pytest.importorskip("trl")
from tests.align import trl_reference as ref  # noqa: E402

TOL = dict(rtol=1e-6, atol=1e-6)


def _batch(B=4, T=7, seed=0):
    """Per-token log-probs (B, T) needing grad, right-padded 0/1 masks with 2..T tokens, reference sums."""
    g = torch.Generator().manual_seed(seed)
    tok = (-3 * torch.rand(B, T, generator=g, dtype=torch.float64)).requires_grad_(True)
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    ref_logps = -3 * T / 2 * torch.rand(B, generator=g, dtype=torch.float64)
    return tok, mask, ref_logps


def _grad(loss, *xs):
    return torch.autograd.grad(loss, xs, retain_graph=True)  # ours and theirs may share the input graph


@pytest.mark.parametrize("loss_type", sorted(DPO_LOSSES))
def test_dpo_matches_trl(loss_type):
    ls = {"robust": 0.1, "exo_pair": 1e-3}.get(loss_type, 0.0)
    for beta in (0.1, 0.5):
        c_tok, c_mask, ref_c = _batch(seed=1)
        r_tok, r_mask, ref_r = _batch(seed=2)
        theirs = ref.trl_dpo_loss(c_tok, r_tok, c_mask, r_mask, ref_c, ref_r, beta=beta, loss_type=loss_type,
                                  label_smoothing=ls)
        ours = dpo_loss(masked_sum(c_tok, c_mask, 1), masked_sum(r_tok, r_mask, 1), ref_c, ref_r, beta=beta,
                        loss_type=loss_type, label_smoothing=ls, chosen_lengths=c_mask.sum(1),
                        rejected_lengths=r_mask.sum(1))[0].mean()
        torch.testing.assert_close(ours, theirs, **TOL)
        torch.testing.assert_close(_grad(ours, c_tok, r_tok), _grad(theirs, c_tok, r_tok), **TOL)


def test_kto_matches_trl():
    tok, mask, ref_logps = _batch(B=6, seed=3)
    kl_tok, _, ref_kl = _batch(B=6, seed=4)
    ref_kl = ref_kl - 2.0  # a positive KL estimate, so the clamp does not hide it
    labels = torch.tensor([True, False, True, True, False, False])
    theirs = ref.trl_kto_loss(tok, mask, labels, kl_tok, ref_logps, ref_kl, beta=0.2, desirable_weight=1.3,
                              undesirable_weight=0.7)
    seq, kl_seq = masked_sum(tok, mask, 1), masked_sum(kl_tok, mask, 1).detach()
    losses, _, _, kl = kto_loss(seq[labels], seq[~labels], kl_seq, ref_logps[labels], ref_logps[~labels], ref_kl,
                                beta=0.2, desirable_weight=1.3, undesirable_weight=0.7)
    assert kl > 0
    ours = losses.mean()
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(_grad(ours, tok), _grad(theirs, tok), **TOL)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_simpo_matches_trl_cpo(label_smoothing):
    c_tok, c_mask, _ = _batch(seed=5)
    r_tok, r_mask, _ = _batch(seed=6)
    c, r = masked_mean(c_tok, c_mask, 1), masked_mean(r_tok, r_mask, 1)  # SimPO: mean token log-probs
    theirs = ref.trl_cpo_losses(c, r, beta=2.0, loss_type="simpo", simpo_gamma=0.7,
                                label_smoothing=label_smoothing).mean()
    ours = simpo_loss(c, r, beta=2.0, gamma=0.7, label_smoothing=label_smoothing).mean()
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(_grad(ours, c_tok), _grad(theirs, c_tok), **TOL)


def test_orpo_matches_trl():
    c_tok, c_mask, _ = _batch(seed=7)
    r_tok, r_mask, _ = _batch(seed=8)
    c, r = masked_mean(c_tok, c_mask, 1), masked_mean(r_tok, r_mask, 1)
    their_losses, their_log_odds = ref.trl_orpo_losses(c, r, beta=0.25)
    losses, log_odds = orpo_loss(c, r, beta=0.25)
    # TRL returns beta * log sigmoid(log_odds) and subtracts its mean from the NLL; ours is the term itself.
    # TRL casts the log-probs to float32 first, so its values carry fp32 rounding (~1e-7), inside TOL.
    tol = dict(TOL, check_dtype=False)
    torch.testing.assert_close(losses.mean(), -their_losses.mean(), **tol)
    torch.testing.assert_close(log_odds.mean(), their_log_odds, **tol)
    torch.testing.assert_close(_grad(losses.mean(), c_tok), _grad(-their_losses.mean(), c_tok), **tol)


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_grpo_advantages_match_trl(scale_rewards):
    rewards = torch.tensor([1.0, 0.0, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 0.0, 1.0, 0.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(grpo_advantages(rewards, 4, scale_rewards=scale_rewards),
                               ref.trl_grpo_advantages(rewards, 4, scale_rewards), **TOL)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_matches_trl(loss_type, beta):
    logps, mask, _ = _batch(B=6, T=9, seed=9)
    g = torch.Generator().manual_seed(10)
    old = (logps + 0.3 * torch.randn(6, 9, generator=g, dtype=torch.float64)).detach()  # ratios beyond the clip
    ref_logps = (logps + 0.2 * torch.randn(6, 9, generator=g, dtype=torch.float64)).detach()
    adv = torch.randn(6, generator=g, dtype=torch.float64)
    kw = dict(beta=beta, epsilon_low=0.2, epsilon_high=0.28, max_completion_length=12)
    theirs = ref.trl_grpo_loss(logps, old, ref_logps, adv, mask, loss_type=loss_type, **kw)
    ours = grpo_loss(logps, old, ref_logps, adv, mask, loss_type=loss_type, **kw)
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(_grad(ours, logps), _grad(theirs, logps), **TOL)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_jsd_matches_trl_gkd(beta, temperature):
    g = torch.Generator().manual_seed(11)
    student = torch.randn(3, 5, 11, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 5, 11, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.float64)
    theirs = ref.trl_jsd(student, teacher, mask, beta=beta, temperature=temperature)
    ours = jsd_loss(student, teacher, mask, beta=beta, temperature=temperature)
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(_grad(ours, student), _grad(theirs, student), **TOL)
