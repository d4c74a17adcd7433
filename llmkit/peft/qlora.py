"""QLoRA's frozen base: `Linear4bit` (NF4 weights, dequantised on the fly) and the model swap.

QLoRA (Dettmers et al. 2023, arXiv:2305.14314) = a frozen NF4 base + LoRA on
top + paged optimizers. The first two are here: ``quantize_model_4bit`` swaps
every ``nn.Linear`` (except the output head; embeddings are not linears) for a
``Linear4bit``, and ``apply_lora`` then wraps those exactly as it wraps float
linears (``base_layer`` convention), so LoRA, DoRA and ``disable_adapters``
need no QLoRA-specific code.

Memory: the weight is 4 bits per parameter plus the double-quantised scales
(0.127 bits), about 0.516 bytes/param. The matmul goes through a custom
autograd function that re-dequantises in backward instead of saving the
dequantised weight, so training holds no full-precision copy of any frozen
weight beyond the one layer being computed (what bitsandbytes' MatMul4Bit does).

Compute dtype: the paper computes in bf16 on GPU; the default here is the
original weight's dtype, because fp32 matmuls are the fast path on CPU.

Paged optimizers (the paper's third part) page optimizer state between GPU and
CPU memory through CUDA unified memory to survive memory spikes. They are
CUDA-only (bitsandbytes ``PagedAdamW``) and not implemented here; on CPU the
optimizer state already lives in host memory.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.peft.base import inside_adapter, replace_module
from llmkit.peft.nf4 import dequantize_absmax, dequantize_nf4, quantize_absmax, quantize_nf4


class _DequantizedMatmul(torch.autograd.Function):
    """y = x W^T with W dequantised in forward and again in backward, never saved."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "Linear4bit") -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantize())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None
        return grad @ ctx.layer.dequantize(), None  # (..., out) @ (out, in) -> (..., in)


class Linear4bit(nn.Module):
    """A frozen linear layer whose weight is stored as NF4 (optionally with double-quantised scales).

    Buffers: ``weight_packed`` (uint8, two indices per byte) and ``absmax`` (float32 per block), or
    with double quantisation ``absmax`` as float8 codes plus ``absmax_scale`` and ``absmax_offset``.
    The bias, if any, stays a float parameter.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 compute_dtype: torch.dtype = torch.float32, block_size: int = 64, double_quant: bool = True,
                 device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype, self.block_size, self.double_quant = compute_dtype, block_size, double_quant
        n_blocks = math.ceil(in_features * out_features / block_size)
        self.register_buffer("weight_packed", torch.zeros(n_blocks * block_size // 2, dtype=torch.uint8, device=device))
        if double_quant:
            self.register_buffer("absmax", torch.zeros(n_blocks, dtype=torch.float8_e4m3fn, device=device))
            self.register_buffer("absmax_scale", torch.zeros(math.ceil(n_blocks / 256), device=device))
            self.register_buffer("absmax_offset", torch.zeros((), device=device))
        else:
            self.register_buffer("absmax", torch.zeros(n_blocks, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=compute_dtype, device=device),
                                 requires_grad=False) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, compute_dtype: torch.dtype | None = None, block_size: int = 64,
                    double_quant: bool = True) -> "Linear4bit":
        """Quantise ``linear``'s weight (its bias is kept in ``compute_dtype``)."""
        w = linear.weight
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, compute_dtype or w.dtype,
                block_size, double_quant, w.device)
        packed, absmax = quantize_nf4(w, block_size)
        q.weight_packed.copy_(packed)
        if double_quant:
            codes, scale, offset = quantize_absmax(absmax)
            q.absmax.copy_(codes)
            q.absmax_scale.copy_(scale)
            q.absmax_offset.copy_(offset)
        else:
            q.absmax.copy_(absmax)
        if linear.bias is not None:
            q.bias.copy_(linear.bias)
        return q

    def dequantize(self) -> torch.Tensor:
        """The weight (out, in) in ``compute_dtype``."""
        absmax = self.absmax
        if self.double_quant:
            absmax = dequantize_absmax(absmax, self.absmax_scale, self.absmax_offset)
        flat = dequantize_nf4(self.weight_packed, absmax, self.in_features * self.out_features, self.block_size,
                              self.compute_dtype)
        return flat.view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out), in x's dtype
        y = _DequantizedMatmul.apply(x.to(self.compute_dtype), self)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def to_linear(self) -> nn.Linear:
        """A float ``nn.Linear`` (``compute_dtype``) holding the dequantised weight."""
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                           device=self.weight_packed.device, dtype=self.compute_dtype)
        with torch.no_grad():
            linear.weight.copy_(self.dequantize())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"compute_dtype={self.compute_dtype}, block_size={self.block_size}, double_quant={self.double_quant}")


def quantize_model_4bit(model: nn.Module, compute_dtype: torch.dtype | None = None, block_size: int = 64,
                        double_quant: bool = True, skip: Sequence[str] = ("lm_head",)) -> nn.Module:
    """Swap every ``nn.Linear`` in ``model`` for a :class:`Linear4bit`, in place.

    Adapters' own layers (``lora_A``, bottleneck projections ...) are left alone, but the
    ``base_layer`` of a LoRA wrapper is quantised, so ``apply_lora(init="pissa")`` followed by
    this function quantises PiSSA's residual (as the PiSSA paper recommends).

    Args:
        model: any module tree.
        compute_dtype: dtype of the on-the-fly dequantised weight; None = each linear's own dtype.
        block_size: NF4 block (64 in the paper).
        double_quant: quantise the per-block scales too (0.127 instead of 0.5 bits/param of overhead).
        skip: leaf names kept in full precision (the output head by default).
    Returns:
        ``model``.
    """
    adapter_inner = inside_adapter(model)
    for name, module in list(model.named_modules()):
        if (type(module) is nn.Linear and name not in adapter_inner
                and name.rsplit(".", 1)[-1] not in skip):
            replace_module(model, name, Linear4bit.from_linear(module, compute_dtype, block_size, double_quant))
    return model
