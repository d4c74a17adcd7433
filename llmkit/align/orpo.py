"""ORPO's odds-ratio term (Hong et al., 2024): preference learning without a reference model.

With ``p = exp(mean token log-prob)`` of an answer, the odds are ``p / (1 - p)``
and the term is ``-beta * log sigmoid(log odds(chosen) - log odds(rejected))``.
The loop adds the chosen answer's NLL (the SFT part); this file is only the
pure function, on *mean* token log-probs, matching TRL's ``odds_ratio_loss``
(which returns the negated term).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, without cancellation (branch at -log 2, Maechler 2012)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, *, beta: float = 0.1) -> tuple[Tensor, Tensor]:
    """Per-pair odds-ratio losses.

    Args:
        chosen_logps: (B,) mean token log-probs of the chosen answers under the policy (< 0).
        rejected_logps: (B,) the same for the rejected answers.
        beta: weight of the odds-ratio term against the NLL.

    Returns:
        ``(losses, log_odds)``, each (B,): ``-beta * log sigmoid(log_odds)`` and the log odds ratio.
    """
    log_odds = (chosen_logps - rejected_logps) - (log1mexp(chosen_logps) - log1mexp(rejected_logps))
    return -beta * F.logsigmoid(log_odds), log_odds
