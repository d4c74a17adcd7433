"""Activation (gradient) checkpointing per decoder block.

A checkpointed block keeps only its input during the forward pass and
recomputes its activations in backward, trading about one extra forward
(~33% more compute) for activation memory that no longer grows with depth:
the standard way to fit longer sequences or bigger batches (Chen et al. 2016).

The block's ``forward`` is replaced on the instance by a call through
``torch.utils.checkpoint`` (non-reentrant), rather than wrapping the module
in another one: parameter names, and so checkpoints and HF exports, stay
unchanged. The RNG state is
saved and restored around the recomputation, so dropout draws the same masks
and gradients equal those of the plain model.
"""
from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint


def enable(model: nn.Module) -> int:
    """Checkpoint every block in ``model.model.layers``; returns how many."""
    layers = model.model.layers
    for layer in layers:
        layer.forward = functools.partial(checkpoint, type(layer).forward.__get__(layer), use_reentrant=False)
    return len(layers)

