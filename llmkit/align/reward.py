"""Reward modelling: the Bradley-Terry pairwise loss.

A reward model scores a (prompt, answer) with one number; under the
Bradley-Terry model ``P(chosen > rejected) = sigmoid(r_c - r_r)``, so the loss
is ``-log sigmoid(r_c - r_r - margin)`` (the optional margin, from Llama 2,
asks for a larger gap where annotators were more certain). Same as TRL's
``RewardTrainer.compute_loss`` per pair.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def reward_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, *, margin: Tensor | float | None = None) -> Tensor:
    """Per-pair Bradley-Terry losses.

    Args:
        chosen_rewards: (B,) scores of the preferred answers.
        rejected_rewards: (B,) scores of the other answers.
        margin: (B,) or scalar gap the chosen score should exceed the rejected one by; None = 0.

    Returns:
        (B,) ``-log sigmoid(chosen - rejected - margin)``.
    """
    diff = chosen_rewards - rejected_rewards
    return -F.logsigmoid(diff if margin is None else diff - margin)
