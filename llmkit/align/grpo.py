"""GRPO (Shao et al., 2024, DeepSeekMath): PPO without a value model, advantages relative to a group.

For each prompt ``group_size`` completions are sampled and scored; each one's
advantage is its reward minus the group mean, divided by the group's std
(``scale_rewards="group"``), the batch's std (``"batch"``, Liu et al.'s
Dr. GRPO recommends ``"none"``). Every token of a completion shares its
advantage. The loss is PPO's clipped surrogate with asymmetric clipping
``[1 - epsilon_low, 1 + epsilon_high]`` (DAPO's clip-higher), plus
``beta * k3`` where ``k3 = exp(ref - logp) - (ref - logp) - 1`` is Schulman's
unbiased, always-positive KL estimator. How token losses become one number
is ``loss_type``:

- ``grpo``: mean over each sequence's tokens, then over sequences (the paper;
  biased towards short answers when advantages are positive);
- ``bnpo``: mean over all tokens of the batch;
- ``dr_grpo``: sum over tokens / (sequences * ``max_completion_length``), a
  constant normaliser, so no length bias (Liu et al., 2025);
- ``dapo``: sum over tokens / tokens in the whole generation batch (Yu et
  al., 2025); for one batch this equals ``bnpo``.

Same formulas and epsilons as TRL's ``GRPOTrainer`` (token-level importance
sampling, no vLLM correction), which the parity tests check.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from llmkit.align.ops import masked_mean, masked_sum

ScaleRewards = Literal["group", "batch", "none"]
GRPOLossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
STD_EPS = 1e-4  # TRL's: keeps a group whose rewards are all equal at advantage 0


def grpo_advantages(rewards: Tensor, group_size: int, *, scale_rewards: ScaleRewards = "group") -> Tensor:
    """Group-relative advantages.

    Args:
        rewards: (B,) one reward per completion; groups are consecutive runs of ``group_size``.
        group_size: completions per prompt (> 1).
        scale_rewards: divide by the group's std, the batch's std, or nothing (Bessel-corrected stds).

    Returns:
        (B,) advantages; they sum to zero within each group.
    """
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"group_size={group_size}: must be >= 2 and divide the {rewards.numel()} rewards")
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards={scale_rewards!r}: must be group, batch or none")
    grouped = rewards.view(-1, group_size)  # (prompts, group_size)
    advantages = (grouped - grouped.mean(1, keepdim=True)).view(-1)
    if scale_rewards == "group":
        advantages = advantages / (grouped.std(1).repeat_interleave(group_size) + STD_EPS)
    elif scale_rewards == "batch":
        advantages = advantages / (rewards.std() + STD_EPS)
    return advantages


def k3_kl(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """Per-token ``exp(ref - logp) - (ref - logp) - 1``: an unbiased, non-negative estimate of KL(pi || ref)."""
    diff = ref_logps - logps
    return torch.exp(diff) - diff - 1


def grpo_loss(logps: Tensor, old_logps: Tensor | None, ref_logps: Tensor | None, advantages: Tensor, mask: Tensor, *,
              epsilon_low: float = 0.2, epsilon_high: float = 0.2, beta: float = 0.0, loss_type: GRPOLossType = "dapo",
              max_completion_length: int | None = None) -> Tensor:
    """The GRPO loss of a batch of completions.

    Args:
        logps: (B, T) token log-probs under the policy being trained.
        old_logps: (B, T) under the policy that sampled; None = ``logps.detach()`` (one update per rollout).
        ref_logps: (B, T) under the reference; needed when ``beta > 0``.
        advantages: (B,) from :func:`grpo_advantages` (or (B, T) per token).
        mask: (B, T) 1 on completion tokens.
        epsilon_low: lower clip of the ratio, ``1 - epsilon_low``.
        epsilon_high: upper clip, ``1 + epsilon_high``.
        beta: weight of the k3 KL penalty.
        loss_type: the aggregation (module docstring).
        max_completion_length: ``dr_grpo``'s normaliser; None = ``T``.

    Returns:
        Scalar loss.
    """
    if loss_type not in ("grpo", "bnpo", "dr_grpo", "dapo"):
        raise ValueError(f"loss_type={loss_type!r}: must be grpo, bnpo, dr_grpo or dapo")
    if beta and ref_logps is None:
        raise ValueError("beta > 0 needs ref_logps")
    old_logps = logps.detach() if old_logps is None else old_logps
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    ratio = torch.exp(logps - old_logps)
    per_token = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * adv)
    if beta:
        per_token = per_token + beta * k3_kl(logps, ref_logps)
    if loss_type == "grpo":
        return masked_mean(per_token, mask, dim=1).mean()
    if loss_type == "dr_grpo":
        return masked_sum(per_token, mask) / (per_token.size(0) * (max_completion_length or per_token.size(1)))
    return masked_mean(per_token, mask)  # bnpo, dapo: over every completion token of the batch
