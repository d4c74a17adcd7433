"""Normalisation layers, chosen by name through ``NORMS``.

RMSNorm (Zhang & Sennrich 2019) rescales by the root mean square and has no
bias; LayerNorm (Ba et al. 2016) also centres. Both compute in fp32 and cast
back, as the reference LLaMA code does, so bf16 models stay stable.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.model import fused


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous() and fused.applies(x, self.weight):
            return fused.rms_norm(x, self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float()
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), w.shape, w, b, self.eps).to(x.dtype)


# name -> (dim, eps, bias) -> module; RMSNorm has no bias to drop
NORMS: dict[str, Callable[[int, float, bool], nn.Module]] = {
    "rmsnorm": lambda dim, eps, bias: RMSNorm(dim, eps),
    "layernorm": LayerNorm,
}


def build_norm(kind: str, dim: int, eps: float, bias: bool = True) -> nn.Module:
    """A norm by its :data:`NORMS` name (``bias`` applies to LayerNorm only)."""
    try:
        make = NORMS[kind]
    except KeyError:
        raise ValueError(f"unknown norm {kind!r}; expected one of {sorted(NORMS)}") from None
    return make(dim, eps, bias)
