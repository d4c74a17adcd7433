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

With 2 to ``few_rows`` rows (the engine's compiled batch buckets) the loop would re-read each
weight per row, so those calls go to the C++ kernel ``llmkit::few_rows_mm``
(:mod:`llmkit.quant.ops`), which streams each weight once for all rows: on a 2-core Zen 4,
576 x 1536 weights, 2.0-2.6x faster than torch's GEMM in fp32 and 1.5-2.4x in bf16 at 4 and 8 rows
(MKL's fp32 GEMM on AMD reads weights at 5-7 GB/s there). Without the kernel (no compiler),
they stay with torch's GEMM.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from llmkit.quant import ops

# measured on SmolLM2-135M decode: one row is 2.7x faster than the GEMM; with 4 or 8 rows the
# loop re-reads each weight per row, so batches take the few-rows kernel instead
MAX_ROWS = 1
# up to this many rows, the few-rows kernel (at 16 it is level with oneDNN's bf16 GEMM)
FEW_ROWS = 8
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
    """While active, ``F.linear`` on at most ``max_rows`` rows runs as :func:`rowwise_linear`, and on at
    most ``few_rows`` rows of fp32/bf16 on the CPU as the ``few_rows_mm`` kernel (when it is built)."""

    def __init__(self, max_rows: int = MAX_ROWS, few_rows: int = FEW_ROWS):
        super().__init__()
        self.max_rows, self.few_rows = max_rows, few_rows

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            rows = x.numel() // max(x.shape[-1], 1)
            if rows <= self.max_rows:
                return rowwise_linear(*args, **kwargs)
            if rows <= self.few_rows and few_rows_kernel_applies(x, weight):
                bias = args[2] if len(args) > 2 else kwargs.get("bias")
                return torch.ops.llmkit.few_rows_mm(x, weight, bias)
        return func(*args, **kwargs)


def few_rows_kernel_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The kernel is built (:func:`llmkit.quant.ops.load`, called before tracing) and takes these tensors."""
    return (ops.native(x) and weight.dim() == 2 and weight.device.type == "cpu"
            and x.dtype == weight.dtype in (torch.float32, torch.bfloat16))
