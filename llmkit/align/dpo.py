"""DPO and its family as one pure function on sequence log-probabilities.

Every loss here scores a pair by the policy's log-ratios to the reference,
``chosen_logratios = log pi(y_w|x) - log pi_ref(y_w|x)`` (and likewise for the
rejected answer), and differs only in what it does with the two. Each
``loss_type`` is a small function in :data:`DPO_LOSSES`; the formulas follow
TRL's ``DPOTrainer`` term for term (the parity tests compare against it):

- ``sigmoid``: DPO, ``-log sigmoid(beta * delta)`` (Rafailov et al., 2023).
- ``robust``: cDPO / robust DPO with label-noise rate ``label_smoothing``
  (Chowdhury et al., 2024): unbiased under flipped labels.
- ``hinge``: SLiC, ``relu(1 - beta * delta)``.
- ``ipo``: ``(delta - 1/(2 beta))^2`` on per-token log-ratios (Azar et al., 2023).
- ``exo_pair``: EXO, the reverse KL to the label distribution ``(1-eps, eps)``.
- ``bco_pair``: BCO, each answer classified on its own.
- ``sppo_hard``: SPPO with hard win probabilities.
- ``nca_pair``: NCA, absolute rewards rather than their difference.
- ``apo_zero`` / ``apo_down``: anchored preference optimisation (D'Oosterlinck et al., 2024).
- ``sigmoid_norm``: DPO on per-token (length-normalised) log-ratios.

``ipo`` and ``sigmoid_norm`` divide the sequence log-ratios by the number of
completion tokens (``chosen_lengths`` / ``rejected_lengths``), as TRL does;
without lengths the log-probs are taken to be per-token already.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

PairLoss = Callable[[Tensor, Tensor, float, float], Tensor]


def _sigmoid(c: Tensor, r: Tensor, beta: float, eps: float) -> Tensor:
    return -F.logsigmoid(beta * (c - r))


def _robust(c: Tensor, r: Tensor, beta: float, eps: float) -> Tensor:
    z = beta * (c - r)
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def _hinge(c: Tensor, r: Tensor, beta: float, eps: float) -> Tensor:
    return torch.relu(1 - beta * (c - r))


def _ipo(c: Tensor, r: Tensor, beta: float, eps: float) -> Tensor:
    return (c - r - 1 / (2 * beta)) ** 2


def _exo_pair(c: Tensor, r: Tensor, beta: float, eps: float) -> Tensor:
    z = beta * (c - r)
    # KL(softmax over {chosen, rejected} || (1 - eps, eps)), written with log-sigmoids
    return (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps))
            + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps)))


def _bco_pair(c: Tensor, r: Tensor, beta: float, eps: float) -> Tensor:
    return -F.logsigmoid(beta * c) - F.logsigmoid(-beta * r)


def _sppo_hard(c: Tensor, r: Tensor, beta: float, eps: float) -> Tensor:
    return (c - 0.5 / beta) ** 2 + (r + 0.5 / beta) ** 2


def _nca_pair(c: Tensor, r: Tensor, beta: float, eps: float) -> Tensor:
    return -F.logsigmoid(beta * c) - 0.5 * F.logsigmoid(-beta * c) - 0.5 * F.logsigmoid(-beta * r)


def _apo_zero(c: Tensor, r: Tensor, beta: float, eps: float) -> Tensor:
    return 1 - torch.sigmoid(beta * c) + torch.sigmoid(beta * r)


def _apo_down(c: Tensor, r: Tensor, beta: float, eps: float) -> Tensor:
    return torch.sigmoid(beta * c) + 1 - torch.sigmoid(beta * (c - r))


DPO_LOSSES: dict[str, PairLoss] = {
    "sigmoid": _sigmoid, "robust": _robust, "hinge": _hinge, "ipo": _ipo, "exo_pair": _exo_pair,
    "bco_pair": _bco_pair, "sppo_hard": _sppo_hard, "nca_pair": _nca_pair, "apo_zero": _apo_zero,
    "apo_down": _apo_down, "sigmoid_norm": _sigmoid,
}
LENGTH_NORMALISED = ("ipo", "sigmoid_norm")  # log-ratios divided by the completion length first


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, chosen_lengths: Tensor | None = None,
             rejected_lengths: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair preference losses and the implicit rewards.

    Args:
        policy_chosen_logps: (B,) summed log-probs of the chosen completions under the policy.
        policy_rejected_logps: (B,) the same for the rejected completions.
        ref_chosen_logps: (B,) the chosen completions under the reference (no gradient needed).
        ref_rejected_logps: (B,) the rejected completions under the reference.
        beta: inverse temperature of the implicit reward (IPO: the regularisation tau).
        loss_type: a key of :data:`DPO_LOSSES`.
        label_smoothing: ``robust``: the assumed rate of flipped labels, in [0, 0.5);
            ``exo_pair``: the label distribution's epsilon, in (0, 1).
        chosen_lengths: (B,) completion tokens of the chosen answers, for ``ipo`` / ``sigmoid_norm``.
        rejected_lengths: (B,) the same for the rejected answers.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each (B,); the rewards are
        ``beta * (policy - reference)`` log-ratios, detached.
    """
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"loss_type={loss_type!r}: must be one of {', '.join(DPO_LOSSES)}")
    if loss_type == "robust" and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing}: robust DPO needs a flip rate in [0, 0.5)")
    if loss_type == "exo_pair" and not 0.0 < label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing}: exo_pair needs an epsilon in (0, 1), e.g. 1e-3")
    if beta <= 0:
        raise ValueError(f"beta={beta}: must be > 0")
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    if loss_type in LENGTH_NORMALISED:
        if chosen_lengths is not None:
            chosen = chosen / chosen_lengths.clamp(min=1)
        if rejected_lengths is not None:
            rejected = rejected / rejected_lengths.clamp(min=1)
    losses = DPO_LOSSES[loss_type](chosen, rejected, beta, label_smoothing)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards
