"""SmoothQuant (Xiao et al. 2023, arXiv:2211.10438): move activation outliers into the weight, then W8A8.

Activations have a few channels with values 10-100x the rest, so per-token int8
wastes most of its codes on them; weights are smooth. Dividing input channel j
by s_j and multiplying weight column j by s_j leaves X W^T unchanged and, with

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)      (alpha = 0.5 by default)

balances the two ranges so both quantise well. max|X_j| comes from calibration
data. The paper folds 1/s into the preceding LayerNorm; here it stays on the
layer as its ``smooth`` vector (see :mod:`llmkit.quant.linear`), which costs one
elementwise divide per call and needs no knowledge of the graph.
"""
from __future__ import annotations

import torch
from torch import nn

from llmkit.quant.w8a8 import W8A8Linear

EPS = 1e-5  # floors both maxima, so a dead channel gets s = 1-ish instead of 0 or inf


def smoothing_factors(x_absmax: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """s (in,) from the per-channel activation maxima (in,) and the weight (out, in)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha} must lie in [0, 1]")
    w_absmax = weight.detach().abs().amax(dim=0).float().clamp(min=EPS)
    return (x_absmax.float().clamp(min=EPS).pow(alpha) / w_absmax.pow(1 - alpha)).clamp(min=EPS)


@torch.no_grad()
def smoothquant_linear(linear: nn.Linear, x: torch.Tensor, alpha: float = 0.5) -> W8A8Linear:
    """The W8A8 layer for ``linear`` given its calibration inputs ``x`` (n, in)."""
    s = smoothing_factors(x.abs().amax(dim=0), linear.weight, alpha)
    return W8A8Linear.from_linear(linear, smooth=s)
