"""Each loss's defining property, independent of any reference library."""
from __future__ import annotations

import math

import pytest
import torch

from llmkit.align import (AdaptiveKLController, dpo_loss, entropy_bonus, gae, grpo_advantages, grpo_loss, jsd_loss,
                          kd_loss, kl_penalty_rewards, kto_loss, orpo_loss, ppo_policy_loss, ppo_value_loss,
                          reverse_kl_loss, reward_loss, simpo_loss)
from llmkit.align.dpo import DPO_LOSSES
from llmkit.align.ops import masked_mean, token_logps

D = torch.float64


def test_dpo_is_log2_when_policy_equals_reference():
    logps = -10 * torch.rand(5, dtype=D)
    other = -10 * torch.rand(5, dtype=D)
    for loss_type in ("sigmoid", "robust", "sigmoid_norm"):
        losses, chosen, rejected = dpo_loss(logps, other, logps, other, loss_type=loss_type, label_smoothing=0.0)
        torch.testing.assert_close(losses, torch.full_like(losses, math.log(2)))
        assert chosen.abs().max() == 0 and rejected.abs().max() == 0


def test_dpo_rewards_are_beta_log_ratios_and_loss_falls_with_the_margin():
    c, r = torch.tensor([-5.0, -5.0], dtype=D), torch.tensor([-6.0, -4.0], dtype=D)
    losses, chosen, rejected = dpo_loss(c, r, c - 1, r, beta=0.5)
    torch.testing.assert_close(chosen, torch.full((2,), 0.5, dtype=D))
    torch.testing.assert_close(rejected, torch.zeros(2, dtype=D))
    assert losses[0] < math.log(2)  # the policy moved towards the chosen answer


def test_ipo_minimum_at_half_inverse_beta():
    beta = 0.25
    margins = torch.linspace(0, 4, 401, dtype=D).requires_grad_(True)
    losses = dpo_loss(margins, torch.zeros_like(margins), torch.zeros_like(margins), torch.zeros_like(margins),
                      beta=beta, loss_type="ipo")[0]
    assert margins[losses.argmin()].item() == pytest.approx(1 / (2 * beta))
    assert losses.min().item() == pytest.approx(0.0)


def test_ipo_normalises_by_length():
    c, r, lengths = torch.tensor([-8.0], dtype=D), torch.tensor([-12.0], dtype=D), torch.tensor([4.0], dtype=D)
    z = torch.zeros(1, dtype=D)
    a = dpo_loss(c, r, z, z, loss_type="ipo", chosen_lengths=lengths, rejected_lengths=lengths)[0]
    b = dpo_loss(c / 4, r / 4, z, z, loss_type="ipo")[0]
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("loss_type", sorted(DPO_LOSSES))
def test_every_dpo_loss_prefers_the_chosen_answer(loss_type):
    """A small step that raises the chosen log-prob (and lowers the rejected one) lowers every loss."""
    c = torch.full((3,), -20.0, dtype=D, requires_grad=True)
    r = torch.full((3,), -20.0, dtype=D, requires_grad=True)
    ref = torch.full((3,), -20.0, dtype=D)
    ls = {"robust": 0.1, "exo_pair": 0.01}.get(loss_type, 0.0)
    losses = dpo_loss(c, r, ref, ref, loss_type=loss_type, label_smoothing=ls)[0].sum()
    gc, gr = torch.autograd.grad(losses, (c, r))
    assert (gc - gr < 0).all(), "descent must widen the chosen-rejected gap"


def test_dpo_rejects_bad_arguments():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(x, x, x, x, loss_type="nope")
    with pytest.raises(ValueError, match="exo_pair"):
        dpo_loss(x, x, x, x, loss_type="exo_pair")


def test_orpo_and_simpo_are_symmetric_at_equal_logps():
    x = torch.tensor([-0.5, -2.0], dtype=D)
    losses, log_odds = orpo_loss(x, x, beta=0.3)
    torch.testing.assert_close(log_odds, torch.zeros_like(x))
    torch.testing.assert_close(losses, torch.full_like(x, 0.3 * math.log(2)))
    # odds: p/(1-p) with p = exp(logp); check one value by hand
    p, q = math.exp(-0.5), math.exp(-2.0)
    assert orpo_loss(x[:1], x[1:])[1].item() == pytest.approx(math.log(p / (1 - p)) - math.log(q / (1 - q)))
    torch.testing.assert_close(simpo_loss(x, x, beta=2.0, gamma=0.0), torch.full_like(x, math.log(2)))
    assert (simpo_loss(x, x, gamma=0.5) > math.log(2)).all()  # the target margin is not met


def test_kto_kl_is_detached_and_clamped():
    c = torch.tensor([-3.0], dtype=D, requires_grad=True)
    r = torch.tensor([-3.0], dtype=D)
    kl_policy = torch.tensor([-5.0, -6.0], dtype=D, requires_grad=True)
    losses, _, _, kl = kto_loss(c, r, kl_policy, r, r, torch.tensor([-4.0, -4.0], dtype=D))
    assert kl.item() == 0.0 and not kl.requires_grad  # negative estimate clamped
    torch.testing.assert_close(losses, torch.full((2,), 0.5, dtype=D))  # sigmoid(0) on both sides
    losses.sum().backward()
    assert kl_policy.grad is None


def test_reward_loss_is_bradley_terry():
    a, b = torch.tensor([1.0, 0.0], dtype=D), torch.tensor([1.0, 2.0], dtype=D)
    torch.testing.assert_close(reward_loss(a, b), -torch.log(torch.sigmoid(a - b)))
    torch.testing.assert_close(reward_loss(a, a - 1, margin=1.0), torch.full((2,), math.log(2), dtype=D))


# ----- GRPO -----
def test_grpo_advantages_sum_to_zero_per_group():
    rewards = torch.rand(24, dtype=D)
    for scale in ("group", "batch", "none"):
        adv = grpo_advantages(rewards, 6, scale_rewards=scale)
        torch.testing.assert_close(adv.view(4, 6).sum(1), torch.zeros(4, dtype=D))
    assert grpo_advantages(torch.ones(4, dtype=D), 4).abs().max() == 0  # all equal: no signal, no division by 0
    with pytest.raises(ValueError):
        grpo_advantages(rewards, 5)


def test_grpo_loss_is_policy_gradient_on_policy():
    """With old == current and beta = 0, d loss / d logp_t = -A / normaliser on every masked token."""
    logps = -torch.rand(3, 5, dtype=D, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=D)
    adv = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    expected = {"bnpo": mask * -adv[:, None] / mask.sum(), "dapo": mask * -adv[:, None] / mask.sum(),
                "dr_grpo": mask * -adv[:, None] / (3 * 8),
                "grpo": mask * -adv[:, None] / mask.sum(1, keepdim=True) / 3}
    for loss_type, grad in expected.items():
        loss = grpo_loss(logps, None, None, adv, mask, loss_type=loss_type, max_completion_length=8)
        torch.testing.assert_close(torch.autograd.grad(loss, logps)[0], grad)


def test_grpo_clip_stops_the_gradient_outside_the_trust_region():
    logps = torch.zeros(1, 2, dtype=D, requires_grad=True)
    old = torch.tensor([[-1.0, 0.0]], dtype=D)  # token 0's ratio is e > 1 + epsilon_high
    loss = grpo_loss(logps, old, None, torch.tensor([1.0], dtype=D), torch.ones(1, 2, dtype=D), epsilon_high=0.28)
    grad = torch.autograd.grad(loss, logps)[0]
    assert grad[0, 0] == 0 and grad[0, 1] < 0


def test_grpo_k3_kl_penalty_is_zero_at_the_reference_and_positive_elsewhere():
    logps = -torch.rand(2, 4, dtype=D)
    mask = torch.ones(2, 4, dtype=D)
    adv = torch.zeros(2, dtype=D)
    assert grpo_loss(logps, None, logps, adv, mask, beta=0.1).item() == 0
    assert grpo_loss(logps, None, logps - 0.3, adv, mask, beta=0.1).item() > 0


# ----- PPO -----
def test_gae_with_lambda_one_is_the_discounted_return():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 6, generator=g, dtype=D), torch.randn(3, 6, generator=g, dtype=D)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] + [0] * 5], dtype=D)
    gamma = 0.9
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=1.0)
    for b in range(3):
        n = int(mask[b].sum())
        for t in range(n):
            discounted = sum(gamma ** (k - t) * rewards[b, k] for k in range(t, n))
            assert returns[b, t].item() == pytest.approx(discounted.item())
            assert advantages[b, t].item() == pytest.approx((discounted - values[b, t]).item())
    assert (advantages * (1 - mask)).abs().max() == 0


def test_gae_with_lambda_zero_is_the_td_error():
    rewards, values = torch.tensor([[1.0, 2.0, 3.0]], dtype=D), torch.tensor([[0.5, 0.25, 1.0]], dtype=D)
    adv, _ = gae(rewards, values, torch.ones(1, 3, dtype=D), gamma=0.5, lam=0.0)
    torch.testing.assert_close(adv, torch.tensor([[1 + 0.5 * 0.25 - 0.5, 2 + 0.5 * 1.0 - 0.25, 3 - 1.0]], dtype=D))


def test_ppo_policy_and_value_clipping():
    logps = torch.zeros(1, 2, dtype=D, requires_grad=True)
    old = torch.tensor([[-1.0, 0.0]], dtype=D)
    loss, clipfrac = ppo_policy_loss(logps, old, torch.ones(1, 2, dtype=D), torch.ones(1, 2, dtype=D))
    grad = torch.autograd.grad(loss, logps)[0]
    assert grad[0, 0] == 0 and grad[0, 1] < 0 and clipfrac.item() == 0.5
    values = torch.tensor([[2.0]], dtype=D, requires_grad=True)
    vloss = ppo_value_loss(values, torch.tensor([[0.0]], dtype=D), torch.tensor([[3.0]], dtype=D),
                           torch.ones(1, 1, dtype=D), clip=0.2)
    assert vloss.item() == pytest.approx(0.5 * (3.0 - 0.2) ** 2)  # the clipped error is larger and counts


def test_kl_penalty_rewards_put_the_score_on_the_last_token():
    logps, ref = -torch.rand(2, 4, dtype=D), -torch.rand(2, 4, dtype=D)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=D)
    rewards = kl_penalty_rewards(torch.tensor([1.0, -1.0], dtype=D), logps, ref, mask, kl_coef=0.1)
    assert rewards[0, 3] == 0
    torch.testing.assert_close(rewards[0, 2], 1.0 - 0.1 * (logps[0, 2] - ref[0, 2]))
    torch.testing.assert_close(rewards.sum(1), torch.tensor([1.0, -1.0], dtype=D)
                               - 0.1 * ((logps - ref) * mask).sum(1))


def test_adaptive_kl_controller_tracks_the_target():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=100)
    assert ctl.update(12.0, 10) == pytest.approx(0.1 * 1.02)  # error clipped at +0.2
    high = ctl.value
    assert ctl.update(3.0, 10) < high


def test_entropy_bonus_of_uniform_logits_is_log_vocab():
    assert entropy_bonus(torch.zeros(2, 3, 7, dtype=D), torch.ones(2, 3, dtype=D)).item() == pytest.approx(math.log(7))


# ----- distillation -----
def test_distillation_losses_are_zero_when_student_equals_teacher():
    logits = torch.randn(2, 3, 9, dtype=D)
    mask = torch.ones(2, 3, dtype=D)
    for t in (1.0, 2.0):
        assert kd_loss(logits, logits, mask, temperature=t).abs().item() < 1e-12
        assert reverse_kl_loss(logits, logits, mask, temperature=t).abs().item() < 1e-12
        for beta in (0.0, 0.5, 1.0):
            assert jsd_loss(logits, logits, mask, beta=beta, temperature=t).abs().item() < 1e-12
    other = torch.randn(2, 3, 9, dtype=D)
    assert kd_loss(other, logits, mask) > 0 and reverse_kl_loss(other, logits, mask) > 0


def test_jsd_endpoints_are_forward_and_reverse_kl():
    s, t = torch.randn(2, 3, 9, dtype=D), torch.randn(2, 3, 9, dtype=D)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=D)
    torch.testing.assert_close(jsd_loss(s, t, mask, beta=0.0), kd_loss(s, t, mask))
    torch.testing.assert_close(jsd_loss(s, t, mask, beta=1.0), reverse_kl_loss(s, t, mask))
    assert jsd_loss(s, t, mask, beta=0.5) <= math.log(2)  # JSD is bounded by log 2


def test_token_logps_and_masked_mean():
    logits = torch.randn(2, 3, 5, dtype=D)
    targets = torch.randint(0, 5, (2, 3))
    torch.testing.assert_close(token_logps(logits, targets),
                               torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0])
    mask = torch.tensor([[1, 0, 1], [0, 0, 0]], dtype=D)
    torch.testing.assert_close(masked_mean(torch.ones(2, 3, dtype=D), mask, dim=1), torch.tensor([1.0, 0.0], dtype=D))
