"""Logits processors: pure functions ``(logits (B, V), ...) -> logits (B, V)``.

Each one does a single thing and knows nothing about the others;
:func:`llmkit.generate.sampling.process_logits` chains them in the order
transformers and vLLM use (penalties, then temperature, then the truncations
top-k, top-p, min-p). Filtered-out tokens get ``-inf``, so any later step
(softmax, argmax, Gumbel noise) ignores them without special cases. They are
plain tensor code with no data-dependent Python branching, so they compile
into the decode step.

Penalty semantics follow their sources:
- repetition penalty (Keskar et al. 2019, CTRL; transformers'
  ``RepetitionPenaltyLogitsProcessor``): a seen token's logit is divided by
  the penalty when positive and multiplied by it when negative, so
  ``penalty > 1`` always makes it less likely;
- presence / frequency penalty (OpenAI API): subtract ``presence`` once from
  every token generated so far and ``frequency`` once per occurrence.
"""
from __future__ import annotations

import math

import torch

NEG_INF = float("-inf")


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make tokens already in the sequence less likely (``penalty > 1``).

    Args:
        logits: (B, V) float scores.
        seen: (B, V) bool, True for tokens in the prompt or the generated text.
        penalty: divisor of positive logits and multiplier of negative ones.
    Returns:
        (B, V) penalised logits.
    """
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def presence_frequency_penalty(logits: torch.Tensor, counts: torch.Tensor, presence: float,
                               frequency: float) -> torch.Tensor:
    """OpenAI's additive penalties on generated tokens.

    Args:
        logits: (B, V) float scores.
        counts: (B, V) float, how often each token was generated so far.
        presence: subtracted once from every token with a non-zero count.
        frequency: subtracted once per occurrence.
    Returns:
        (B, V) ``logits - presence * [count > 0] - frequency * count``.
    """
    return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts


def temperature(logits: torch.Tensor, t: float) -> torch.Tensor:
    """Scale logits by ``1 / t`` (``t > 0``; ``t = 0`` means greedy and is handled by the sampler)."""
    return logits / t


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest logits of each row (and any tied with the k-th).

    Args:
        logits: (B, V) float scores.
        k: tokens to keep, ``1 <= k``; ``k >= V`` keeps everything.
    """
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2019): keep the smallest set of most likely tokens with mass >= ``p``.

    A token is kept when the probability mass of the tokens ranked above it is
    still below ``p``; the most likely token is always kept.

    Args:
        logits: (B, V) float scores.
        p: target mass in (0, 1].
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs  # exclusive cumulative sum
    drop_sorted = mass_above >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, NEG_INF)


def min_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least ``p`` times the top token's (Nguyen et al. 2024).

    Compared in log space, ``logit >= max_logit + log p``, which needs no softmax.

    Args:
        logits: (B, V) float scores.
        p: relative threshold in [0, 1].
    """
    threshold = logits.amax(dim=-1, keepdim=True) + math.log(p)  # (B, 1)
    return logits.masked_fill(logits < threshold, NEG_INF)
