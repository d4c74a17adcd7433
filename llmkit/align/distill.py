"""Knowledge-distillation losses on token distributions: forward KL, reverse KL, generalised JSD, GKD's mix.

- :func:`kd_loss`: Hinton et al.'s KD, ``KL(teacher_T || student_T)`` at
  temperature ``T``, times ``T^2`` so gradient sizes do not shrink with ``T``.
  Mode-covering: the student spreads over everything the teacher allows.
- :func:`reverse_kl_loss`: ``KL(student_T || teacher_T) * T^2`` (MiniLLM, Gu et
  al., 2024): mode-seeking, for a small student that cannot cover the teacher.
- :func:`jsd_loss`: the generalised Jensen-Shannon divergence of GKD (Agarwal
  et al., 2024), ``beta KL(t || m) + (1 - beta) KL(s || m)`` with
  ``m = beta t + (1 - beta) s``; ``beta = 0`` is forward KL, ``beta = 1``
  reverse KL (exactly TRL's ``GKDTrainer.generalized_jsd_loss``, no ``T^2``).
- :func:`gkd_on_policy`: GKD trains on the student's own samples with
  probability ``lmbda`` and on the dataset's completions otherwise.

Every loss is the mean over the masked tokens of a per-token divergence over
the vocabulary; logits are (B, T, V) and already aligned between the models.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import Tensor

from llmkit.align.ops import masked_mean


def _log_softmax(logits: Tensor, temperature: float) -> Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return F.log_softmax(logits / temperature, dim=-1)


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """Per-token KL(p || q) from log-probs, (B, T)."""
    return (logp.exp() * (logp - logq)).sum(-1)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Forward KL ``KL(teacher || student)`` at ``temperature``, times ``temperature**2``; masked token mean."""
    s, t = _log_softmax(student_logits, temperature), _log_softmax(teacher_logits, temperature)
    return masked_mean(_kl(t, s), mask) * temperature ** 2


def reverse_kl_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *,
                    temperature: float = 1.0) -> Tensor:
    """Reverse KL ``KL(student || teacher)`` at ``temperature``, times ``temperature**2``; masked token mean."""
    s, t = _log_softmax(student_logits, temperature), _log_softmax(teacher_logits, temperature)
    return masked_mean(_kl(s, t), mask) * temperature ** 2


def jsd_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *, beta: float = 0.5,
             temperature: float = 1.0) -> Tensor:
    """Generalised JSD between teacher and student at ``temperature``; masked token mean.

    Args:
        student_logits: (B, T, V).
        teacher_logits: (B, T, V) (no gradient needed).
        mask: (B, T) 1 on the tokens that count.
        beta: in [0, 1]; 0 = forward KL, 1 = reverse KL.
        temperature: softmax temperature of both.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta}: must be in [0, 1]")
    s, t = _log_softmax(student_logits, temperature), _log_softmax(teacher_logits, temperature)
    if beta == 0.0:
        return masked_mean(_kl(t, s), mask)
    if beta == 1.0:
        return masked_mean(_kl(s, t), mask)
    b = torch.tensor(beta, dtype=s.dtype, device=s.device)
    m = torch.logsumexp(torch.stack([s + torch.log1p(-b), t + torch.log(b)]), dim=0)  # log of the mixture
    return masked_mean(beta * _kl(t, m) + (1 - beta) * _kl(s, m), mask)


def gkd_on_policy(lmbda: float, rng: random.Random) -> bool:
    """Whether this GKD step trains on student-generated completions (probability ``lmbda``)."""
    if not 0.0 <= lmbda <= 1.0:
        raise ValueError(f"lmbda={lmbda}: must be in [0, 1]")
    return rng.random() < lmbda
