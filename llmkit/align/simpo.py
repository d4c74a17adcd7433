"""SimPO (Meng et al., 2024): a reference-free DPO on length-normalised log-probs with a target margin.

``-log sigmoid(beta * (mean logp(chosen) - mean logp(rejected)) - gamma)``,
with conservative label smoothing as in cDPO. TRL implements it as
``CPOTrainer`` with ``loss_type="simpo"`` (there ``gamma`` is ``simpo_gamma``
and the margin enters as ``gamma / beta`` inside the product, the same thing).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def simpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, *, beta: float = 2.0, gamma: float = 0.5,
               label_smoothing: float = 0.0) -> Tensor:
    """Per-pair SimPO losses.

    Args:
        chosen_logps: (B,) mean token log-probs of the chosen answers under the policy.
        rejected_logps: (B,) the same for the rejected answers.
        beta: reward scale.
        gamma: target reward margin.
        label_smoothing: assumed rate of flipped labels, in [0, 0.5).

    Returns:
        (B,) losses.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing}: must be in [0, 0.5)")
    z = beta * (chosen_logps - rejected_logps) - gamma
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
