"""The GGUF block kernels as PyTorch custom operators, with a pure-torch fallback.

Two operators in the ``llmkit`` namespace, written in C++
(``csrc/gguf_ops.cpp``: ``TORCH_LIBRARY`` schema + CPU implementation):

- ``llmkit::gguf_dequantize(weight, qtype, in_features, dtype)``: block rows -> floats;
- ``llmkit::gguf_mm(x, weight, qtype, in_features, int8_activations)``: ``x @ W^T`` reading
  the blocks directly; with ``int8_activations`` a few-row x (decoding) is rounded to int8 per
  32-block and multiplied with int8 dot products, llama.cpp's recipe (AVX2/VNNI CPUs), which is
  faster but moves each product by ~0.5%; without it the products are fp32.

Here they get what the compiler and autograd need: a fake (meta) implementation
each, so ``torch.compile`` traces through them as opaque calls with known output
shapes, and an autograd formula for ``gguf_mm``'s input gradient,
``dx = dy @ W`` with W dequantised in backward (the weight itself is frozen), so a
quantised base can be fine-tuned through with LoRA as QLoRA does.

The library (with the int8 kernel) is built on first use by :mod:`llmkit.quant.ops`.
When it cannot be built, or a tensor is not on the CPU (there is no CUDA
implementation yet), :func:`gguf_linear` and :func:`gguf_dequantize` fall back
to :mod:`llmkit.quant.gguf_types`'s torch dequantisers followed by ``F.linear``:
the same numbers, without the memory or speed benefit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from llmkit.quant.gguf_types import dequantize_blocks, gguf_type
from llmkit.quant.ops import load, native, on_load  # noqa: F401 - load: gguf_ops.load() builds the kernels


def _register() -> None:
    """The fake (meta) implementations and ``gguf_mm``'s autograd formula, once the library is loaded."""
    torch.library.register_fake("llmkit::gguf_dequantize")(_dequantize_shape)
    torch.library.register_fake("llmkit::gguf_mm")(_mm_shape)
    torch.library.register_autograd("llmkit::gguf_mm", _mm_backward, setup_context=_mm_setup)


def _dequantize_shape(weight: torch.Tensor, qtype: int, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    return weight.new_empty(*weight.shape[:-1], in_features, dtype=dtype)


def _mm_shape(x: torch.Tensor, weight: torch.Tensor, qtype: int, in_features: int,
              int8_activations: bool) -> torch.Tensor:
    torch._check(x.shape[-1] == in_features)
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _mm_setup(ctx, inputs, output) -> None:
    x, weight, qtype, in_features, _ = inputs
    ctx.save_for_backward(weight)
    ctx.qtype, ctx.in_features, ctx.x_dtype = qtype, in_features, x.dtype


def _mm_backward(ctx, grad: torch.Tensor):
    """dx = dy @ W, W dequantised again rather than saved; the uint8 weight has no gradient."""
    (weight,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    w = torch.ops.llmkit.gguf_dequantize(weight, ctx.qtype, ctx.in_features, grad.dtype)
    return (grad @ w).to(ctx.x_dtype), None, None, None, None


def gguf_dequantize(weight: torch.Tensor, qtype: str | int, in_features: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Block rows to floats.

    Args:
        weight: (..., row_bytes) uint8 blocks of ``qtype``.
        qtype: layout name (``"q4_1"``) or ggml type id.
        in_features: weights per row.
        dtype: the result's dtype.
    Returns:
        (..., in_features) in ``dtype``.
    """
    t = gguf_type(qtype)
    if native(weight):
        return torch.ops.llmkit.gguf_dequantize(weight, t.ggml_type, in_features, dtype)
    return dequantize_blocks(weight, t.name, in_features).to(dtype)


def gguf_linear(x: torch.Tensor, weight: torch.Tensor, qtype: str | int, in_features: int,
                bias: torch.Tensor | None = None, int8_activations: bool = False) -> torch.Tensor:
    """``F.linear(x, W, bias)`` with W given as block rows.

    Args:
        x: (..., in_features) float activations.
        weight: (out_features, row_bytes) uint8 blocks of ``qtype``.
        qtype: layout name or ggml type id.
        in_features: weights per row.
        bias: (out_features,) or None.
        int8_activations: when x has at most 8 rows, round it to int8 per 32-block and use int8
            dot products (llama.cpp's decode numerics: faster, ~0.5% error per product); the
            fallback ignores it.
    Returns:
        (..., out_features) in x's dtype. Differentiable with respect to x (and the bias).
    """
    t = gguf_type(qtype)
    if native(x):
        y = torch.ops.llmkit.gguf_mm(x, weight, t.ggml_type, in_features, int8_activations)
        return y if bias is None else y + bias.to(y.dtype)
    w = dequantize_blocks(weight, t.name, in_features).to(x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


on_load(_register)
