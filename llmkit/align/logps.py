"""Completion log-probabilities from a causal LM: the one place alignment loops run the model.

Batches use the SFT convention of :mod:`llmkit.data.sft`: ``x`` (B, T) token
ids and ``y`` (B, T) the next tokens, ``-100`` wherever the token is not part
of the completion (prompt, template, padding). So the completion's log-prob
is a masked sum of per-token log-probs, and its mean the same divided by the
completion length (SimPO, ORPO, IPO use means).

The reference model's log-probs are computed once per batch, under
``torch.no_grad``, in eval mode (no dropout). With adapters on the policy
(LoRA, ...), the reference is the *same* model with its adapters disabled
(:func:`llmkit.peft.disable_adapters`): no second copy in memory, and the
reference is exactly the starting point because a fresh LoRA's B matrix is 0.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from llmkit.align.ops import masked_sum, token_logps
from llmkit.data.loader import IGNORE_INDEX
from llmkit.peft import disable_adapters
from llmkit.peft.base import adapters


class CompletionLogps(NamedTuple):
    """Per-token log-probs of a batch's completions and their 0/1 mask."""

    tokens: Tensor  # (B, T) log p(y_t | x_<=t), 0 off the mask
    mask: Tensor  # (B, T) 1.0 on completion tokens

    @property
    def sum(self) -> Tensor:
        """(B,) summed log-prob of each completion."""
        return masked_sum(self.tokens, self.mask, 1)

    @property
    def lengths(self) -> Tensor:
        """(B,) completion tokens per row."""
        return self.mask.sum(1)

    @property
    def mean(self) -> Tensor:
        """(B,) mean token log-prob of each completion."""
        return self.sum / self.lengths.clamp(min=1)


def completion_logps(model: nn.Module, x: Tensor, y: Tensor) -> CompletionLogps:
    """Run ``model`` on ``x`` and pick the log-probs of the completion tokens ``y``.

    Args:
        model: a causal LM returning (B, T, V) logits.
        x: (B, T) input ids (right-padded).
        y: (B, T) next-token targets, ``-100`` off the completion.
    """
    mask = y != IGNORE_INDEX
    logits = model(x)
    tokens = token_logps(logits, y.masked_fill(~mask, 0))  # (B, T)
    mask = mask.to(tokens.dtype)
    return CompletionLogps(tokens * mask, mask)


def has_adapters(model: nn.Module) -> bool:
    return any(True for _ in adapters(model))


@torch.no_grad()
def reference_logps(policy: nn.Module, x: Tensor, y: Tensor, ref_model: nn.Module | None = None) -> CompletionLogps:
    """The reference's completion log-probs, without gradients and in eval mode.

    Args:
        policy: the model being trained.
        x: (B, T) input ids.
        y: (B, T) targets as for :func:`completion_logps`.
        ref_model: a separate frozen reference; None = ``policy`` with its adapters disabled
            (an error if it has none: the reference would be the policy itself).
    """
    if ref_model is None and not has_adapters(policy):
        raise ValueError("no reference: give ref_model, or train adapters so the base model is the reference")
    model = ref_model if ref_model is not None else policy
    was_training = model.training
    model.eval()
    try:
        if ref_model is not None:
            return completion_logps(model, x, y)
        with disable_adapters(policy):
            return completion_logps(policy, x, y)
    finally:
        model.train(was_training)
