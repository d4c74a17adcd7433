"""PPO's pieces for RLHF (Schulman et al., 2017; Ziegler et al., 2019; Ouyang et al., 2022), each a pure function.

An RLHF step: the reward model scores each completion once; the per-token
reward is ``-kl_coef * (log pi - log pi_ref)`` at every token plus that score
on the last token (:func:`kl_penalty_rewards`); :func:`gae` turns rewards and
the value head's estimates into advantages and returns; the policy is trained
with the clipped surrogate (:func:`ppo_policy_loss`), the value head with the
clipped value loss (:func:`ppo_value_loss`), minus an entropy bonus
(:func:`entropy_bonus`); :class:`AdaptiveKLController` moves ``kl_coef`` so
the measured KL tracks a target. All tensors are per token, (B, T), with a
0/1 ``mask`` over completion tokens (right-padded).
"""
from __future__ import annotations

import torch
from torch import Tensor

from llmkit.align.ops import masked_mean


def kl_penalty_rewards(scores: Tensor, logps: Tensor, ref_logps: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards: the KL penalty at every token, the sequence score added at the last one.

    Args:
        scores: (B,) reward-model scores of the completions.
        logps: (B, T) token log-probs under the policy that sampled them.
        ref_logps: (B, T) the same under the reference.
        mask: (B, T) 1 on completion tokens (each row has at least one).
        kl_coef: weight of the per-token KL estimate ``logps - ref_logps``.

    Returns:
        (B, T) rewards, 0 off the mask.
    """
    rewards = -kl_coef * (logps - ref_logps) * mask
    last = mask.long().cumsum(1).argmax(1)  # (B,) index of each row's last completion token
    return rewards.scatter_add(1, last.unsqueeze(1), scores.to(rewards.dtype).unsqueeze(1))


def gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016).

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``; the
    episode ends at the last masked token (``V`` after it is 0). With ``lam = 1`` the advantage is the
    discounted return minus ``V_t``.

    Args:
        rewards: (B, T) per-token rewards.
        values: (B, T) value estimates (detached).
        mask: (B, T) 1 on completion tokens, right-padded.
        gamma: discount.
        lam: GAE's lambda (bias-variance trade-off).

    Returns:
        ``(advantages, returns)``, each (B, T), 0 off the mask; ``returns = advantages + values``.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        next_value = values[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def ppo_policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *,
                    clip: float = 0.2) -> tuple[Tensor, Tensor]:
    """The clipped surrogate objective, negated, as a masked mean over tokens.

    Args:
        logps: (B, T) token log-probs under the policy being trained.
        old_logps: (B, T) the same under the policy that sampled (detached).
        advantages: (B, T) advantages (detached).
        mask: (B, T) 1 on completion tokens.
        clip: the ratio stays within ``[1 - clip, 1 + clip]``.

    Returns:
        ``(loss, clip_fraction)``: scalar loss and the share of tokens where clipping was active.
    """
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask).detach()


def ppo_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *, clip: float = 0.2) -> Tensor:
    """Clipped value loss ``0.5 * max((V - R)^2, (clip(V, V_old +- clip) - R)^2)``, masked mean.

    Args:
        values: (B, T) current value estimates.
        old_values: (B, T) estimates when the rollout was made.
        returns: (B, T) targets from :func:`gae`.
        mask: (B, T) 1 on completion tokens.
        clip: how far a value may move from ``old_values`` before its error stops counting.
    """
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def entropy_bonus(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean per-token entropy of the policy (nats) over the mask; subtract ``coef *`` it from the loss.

    Args:
        logits: (B, T, V) logits at the completion positions.
        mask: (B, T) 1 on completion tokens.
    """
    logp = torch.log_softmax(logits.float() if logits.dtype != torch.float64 else logits, dim=-1)
    return masked_mean(-(logp.exp() * logp).sum(-1), mask)


class AdaptiveKLController:
    """Ziegler et al.'s proportional controller: ``kl_coef *= 1 + clip(KL/target - 1, +-0.2) * n / horizon``.

    Args:
        init_kl_coef: the starting coefficient.
        target: the KL (nats per sequence) to hold.
        horizon: steps (in samples) over which an error is corrected.
    """

    def __init__(self, init_kl_coef: float = 0.2, target: float = 6.0, horizon: int = 10000):
        if init_kl_coef < 0 or target <= 0 or horizon <= 0:
            raise ValueError("AdaptiveKLController needs init_kl_coef >= 0, target > 0, horizon > 0")
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move the coefficient after ``n_steps`` samples with mean KL ``current_kl``; returns the new value."""
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value, self.target, self.horizon = state["value"], state["target"], int(state["horizon"])
