"""int8 x int8 linears: W8A8 (SmoothQuant's target) and LLM.int8()'s mixed-precision decomposition.

Both quantise the weight symmetric per output channel and the activations
symmetric per token (row), at run time, and multiply the codes exactly in
int32 (``torch._int_mm``); the product is rescaled by the two scale vectors,
the "vector-wise" quantisation of LLM.int8() (Dettmers et al. 2022,
arXiv:2208.07339, section 3.1).

LLM.int8()'s observation is that a few hidden dimensions carry activations
far larger than the rest (>= 6 from about 6.7B parameters up); a per-token scale
set by such an outlier crushes every other value of the row to a few codes.
:class:`LLMInt8Linear` therefore splits the input columns: those where any
token has |x| >= ``threshold`` are multiplied in floating point against the
dequantised weight columns (as bitsandbytes does, so only the weight's own
rounding remains there), the others go through int8 x int8.

SmoothQuant (Xiao et al. 2023) instead divides the outlier channels down before
quantising (the ``smooth`` vector of :class:`~llmkit.quant.linear.QuantLinear`),
which keeps the whole product in int8; see :mod:`llmkit.quant.smoothquant`.
"""
from __future__ import annotations

import torch
from torch import nn

from llmkit.quant.linear import QuantLinear, smoothed_weight
from llmkit.quant.primitives import affine_params, quantize_affine


def int8_matmul(x: torch.Tensor, weight: torch.Tensor, w_scales: torch.Tensor) -> torch.Tensor:
    """x (M, in) float, per-token int8 on the fly, times int8 ``weight`` (out, in) with ``w_scales`` (out,).

    Returns:
        (M, out) float32: (q_x q_w^T) * s_x s_w, the integer product exact in int32.
    """
    x_scale, _ = affine_params(x, 8)  # (M, 1)
    qx = quantize_affine(x, x_scale, None, 8)
    acc = torch._int_mm(qx, weight.t())  # (M, out) int32
    return acc.float() * x_scale * w_scales.float()


class W8A8Linear(QuantLinear):
    """int8 weights (per output channel) x int8 activations (per token): ``weight`` (out, in), ``scales`` (out,)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, dtype: torch.dtype = torch.float32,
                 smooth: bool = False, device: torch.device | str | None = None):
        super().__init__(in_features, out_features, bias, dtype, smooth, device)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=torch.float32, device=device))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, smooth: torch.Tensor | None = None, **kwargs) -> "W8A8Linear":
        w = smoothed_weight(linear, smooth)
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.dtype,
                device=linear.weight.device, smooth=smooth is not None, **kwargs)
        scale, _ = affine_params(w, 8)
        q.weight.copy_(quantize_affine(w, scale, None, 8))
        q.scales.copy_(scale[:, 0])
        q._copy_float(linear, smooth)
        return q

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        return int8_matmul(x, self.weight, self.scales).to(x.dtype)

    def _weight(self) -> torch.Tensor:
        return self.weight.float() * self.scales[:, None]


class LLMInt8Linear(W8A8Linear):
    """LLM.int8(): input columns with any |x| >= ``threshold`` in floating point, the rest int8 x int8."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, dtype: torch.dtype = torch.float32,
                 threshold: float = 6.0, device: torch.device | str | None = None, smooth: bool = False):
        super().__init__(in_features, out_features, bias, dtype, smooth, device)
        self.threshold = threshold

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        outliers = (x.abs() >= self.threshold).any(dim=0).nonzero().squeeze(1)  # (n_outliers,) column indices
        if outliers.numel() == 0:
            return int8_matmul(x, self.weight, self.scales).to(x.dtype)
        inliers = x.index_fill(1, outliers, 0)  # zeroed columns add nothing to the int8 product
        w_out = self.weight.index_select(1, outliers).float() * self.scales[:, None]  # (out, n_outliers)
        y = int8_matmul(inliers, self.weight, self.scales) + x.index_select(1, outliers).float() @ w_out.T
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, threshold={self.threshold}"
