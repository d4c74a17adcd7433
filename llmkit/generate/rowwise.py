"""Bandwidth-bound linear layers for the compiled CPU decode step.

A decode step multiplies a few activation rows (one per sequence) by every
weight matrix, so it should stream the weights at memory bandwidth. On CPU,
``F.linear`` with one row goes through a GEMM tuned for large matrices: on a
2-core AVX-512 machine with ~30 GB/s of memory bandwidth it reads weights at
~12 GB/s, in fp32 and in bf16 alike. Written as a broadcast multiply followed
by a sum over the input features, the same product is a single reduction that
inductor compiles into one vectorised C++ loop, parallel over output features,
reading each weight once: 25 GB/s in fp32, 23 GB/s in bf16 (the 30 layers of
SmolLM2-135M's shapes on a quiet machine).

:class:`RowwiseLinear` makes that substitution for every ``F.linear`` call with
at most ``max_rows`` rows (default one: batch-1 decoding) while it is active.
Dynamo traces through the mode, so the model's code is untouched and only the
compiled step sees the rewrite.
Eagerly the rewrite would be slow (it materialises the (rows, out, in)
product), which is why ``compile_step`` activates the mode for compiled steps only.
Products accumulate in fp32, as the GEMM does for bf16 weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

# measured on SmolLM2-135M decode: one row is 2.7x faster than the GEMM; with 4 or 8 rows the
# GEMM wins in bf16 (the loop re-reads each weight per row) and fp32 is on par, so batches keep it
MAX_ROWS = 1
# inductor inlines the input's pointwise producer (the final RMSNorm before the LM head) into the
# reduction and recomputes it for every output row, which makes the LM head's 49k-row loop compute
# bound (~21 GB/s); materialising the input first costs one extra loop and barrier, which only pays
# off on matrices this large (measured on SmolLM2: the LM head gains, the 1M-weight layers lose)
MATERIALISE_INPUT_FROM = 1 << 22


def rowwise_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` as multiply-and-sum: x (..., in), weight (out, in), bias (out,) -> (..., out) in x's dtype."""
    if weight.numel() >= MATERIALISE_INPUT_FROM:
        x = x.as_strided(x.shape, x.stride())  # an identity view that inductor must materialise
    y = (x.unsqueeze(-2).float() * weight.float()).sum(-1)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


class RowwiseLinear(TorchFunctionMode):
    """While active, ``F.linear`` on at most ``max_rows`` rows runs as :func:`rowwise_linear`."""

    def __init__(self, max_rows: int = MAX_ROWS):
        super().__init__()
        self.max_rows = max_rows

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x = args[0]
            if x.numel() // max(x.shape[-1], 1) <= self.max_rows:
                return rowwise_linear(*args, **kwargs)
        return func(*args, **kwargs)

