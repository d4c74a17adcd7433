"""Masked reductions and token log-probs: the few tensor operations every alignment loss shares.

Masks are 0/1 (or bool) tensors of the same shape as the values, 1 where a
token counts (a completion token, not padding or prompt).
"""
from __future__ import annotations

import torch
from torch import Tensor


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``values`` where ``mask`` is 1, over ``dim`` (all dims when None)."""
    values = values * mask
    return values.sum() if dim is None else values.sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` over the positions where ``mask`` is 1 (a row without any counts as 0 tokens -> 0)."""
    return masked_sum(values, mask, dim) / masked_sum(torch.ones_like(values), mask, dim).clamp(min=1)


def token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """Log-probability of each target token.

    Args:
        logits: (B, T, V) next-token logits, already aligned with ``targets``.
        targets: (B, T) token ids; any id is fine where the caller's mask is 0 (e.g. padding).

    Returns:
        (B, T) ``log softmax(logits)[targets]``, in the logits' dtype (float32 at least).
    """
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)  # (B, T), without materialising log_softmax
