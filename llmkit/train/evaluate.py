"""Validation loss, perplexity and bits per byte.

Loss is the mean cross-entropy in nats over every target token evaluated
(``-100`` targets excluded), summed over ranks before dividing, so it does
not depend on how the batches were split. Perplexity is ``exp(loss)``.

Bits per byte normalises by the text instead of the tokens, so models with
different tokenizers compare fairly:

    bpb = total nats / (ln 2 * total UTF-8 bytes of the evaluated text)

The trainer does not see text, only token ids, so it takes the bytes as
``tokens evaluated * bytes_per_token``, the validation set's mean. That mean
comes from the data: ``num_bytes / num_tokens`` of the validation shards'
``manifest.json`` (see :mod:`llmkit.train.data`), or whatever the caller
passes. It is exact when the whole validation stream is evaluated and an
unbiased estimate for a sample of it. Without it, ``val_bpb`` is left out.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.train.distributed import Dist, all_reduce_sum

IGNORE_INDEX = -100


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], max_batches: int, d: Dist,
             autocast: contextlib.AbstractContextManager | None = None,
             bytes_per_token: float | None = None,
             forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """Validation metrics over at most ``max_batches`` batches on each rank.

    Args:
        model: the model (train/eval mode is restored afterwards).
        batches: ``(x, y)`` LongTensor (B, T) pairs; ``y`` may hold ``-100``.
        max_batches: batches to evaluate on this rank.
        d: the process group description (sums are taken over ranks).
        autocast: forward context (mixed precision); None = none.
        bytes_per_token: mean UTF-8 bytes per validation token, for ``val_bpb``.
        forward: logits (B, T, vocab) of inputs ``x`` (B, T); default ``model(x)`` (a sequence-parallel
            trainer passes one that adds the chunk's positions).

    Returns:
        ``val_loss``, ``val_ppl``, ``val_tokens`` and, with ``bytes_per_token``, ``val_bpb``.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=d.device)  # (nats, tokens)
    for i, (x, y) in enumerate(batches):
        if i >= max_batches:
            break
        x, y = x.to(d.device), y.to(d.device)
        with autocast or contextlib.nullcontext():
            logits = (forward or model)(x)
        nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        totals += torch.stack([nats.double(), (y != IGNORE_INDEX).sum().double()])
    model.train(was_training)
    nats, tokens = all_reduce_sum(totals, d).tolist()
    if tokens == 0:
        raise ValueError("the validation data yielded no target tokens")
    loss = nats / tokens
    out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)), "val_tokens": int(tokens)}
    if bytes_per_token:
        out["val_bpb"] = nats / (math.log(2) * tokens * bytes_per_token)
    return out
