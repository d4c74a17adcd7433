"""A C++ attention kernel for CPU decoding, swapped into the compiled decode step.

Decoding attends one new token per sequence over the whole KV cache. On CPU,
torch's fused attention (``_scaled_dot_product_flash_attention_for_cpu``) is
built for long query blocks: for SmolLM2-135M's decode shape (3 K/V heads with
3 query rows each after the grouped-query fold, 64-dim heads) it spends about
160 us per layer in the compiled step, a third of the whole step, although a
layer's cache is under 1 MB. It also attends over every slot of the static
cache, filled or not, and splits work by head only (3 tasks for 2 threads).

``decode_attention.cpp`` is the flash-decoding recipe written for this case:
the slots up to the last one the mask allows are cut into equal chunks, each
(batch, head, chunk) task runs an online softmax over its allowed slots with
vectorised fp32 arithmetic (fp32 rows, and bf16 rows on CPUs with AVX512-BF16,
are read as stored; other caches are widened row by row), and the
chunks' partial sums are merged by their running maxima. In SmolLM2's
compiled bf16 step it takes about 50 us per layer against the fused kernel's
160 us (``benchmarks/generate.py`` shows the whole-step effect).

The kernel is compiled on first use with torch's C++ extension builder (a C++
compiler with OpenMP and ninja, as ``torch.compile`` on CPU needs anyway) and
cached by torch under ``~/.cache/torch_extensions``. When it cannot be built,
a warning says why and the step keeps torch's attention. The same kernel reads a
paged cache through block tables (:func:`paged_decode_attention`, for
:mod:`llmkit.engine`): a slot's row is found in its block instead of at a fixed stride, and a task
covers one chunk of one sequence for all K/V heads, reading each block in memory order.
Both read quantized caches too (int8 or fp8 codes with a scale per token and head,
:mod:`llmkit.quant.kv`): a block's rows are dequantized as they are widened to fp32.
:class:`DecodeAttention` swaps it in for ``F.scaled_dot_product_attention``
calls that have the decode shape, the way :mod:`llmkit.generate.rowwise` swaps
linears, so the model's code does not change.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from llmkit import native

SOURCE = Path(__file__).with_name("decode_attention.cpp")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.cache
def load() -> bool:
    """Build (once per machine) and load the kernel; False, with a warning, if that fails."""
    if not native.build("llmkit_decode_attention", [SOURCE], ["-O3", "-march=native", "-ffast-math", "-fopenmp"],
                        "the CPU decode-attention kernel", "decoding with torch's attention"):
        return False
    torch.library.register_fake("llmkit::decode_attention")(_shape)
    torch.library.register_fake("llmkit::paged_decode_attention")(_paged_shape)
    return True


def _shape(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
           k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> torch.Tensor:
    return q.new_empty(*q.shape[:-1], v.shape[-1])


def _paged_shape(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, block_tables: torch.Tensor,
                 context_lens: torch.Tensor, scale: float, k_scale: torch.Tensor | None = None,
                 v_scale: torch.Tensor | None = None) -> torch.Tensor:
    return q.new_empty(*q.shape[:-1], v_pool.shape[-1])


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
                     k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale over the allowed slots) v, with one mask row per sequence.

    Args:
        q: (B, H, T, D) queries; T is small (decoding).
        k: (B, H, S, D) keys, v: (B, H, S, Dv) values: q's dtype (fp32, bf16 or fp16), or int8 /
            float8_e4m3fn codes with scales.
        mask: bool (B or 1, S), True = may attend; every query row of a sequence shares it.
        scale: multiplier of the scores.
        k_scale, v_scale: (B, H, S) float32, a quantized cache's scale per row (key = k * k_scale);
            None for an unquantized cache.
    Returns:
        (B, H, T, Dv) in q's dtype; zeros for a sequence with no allowed slot.
    Requires :func:`load` to have returned True.
    """
    return torch.ops.llmkit.decode_attention(q, k, v, mask, scale, k_scale, v_scale)


def paged_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, block_tables: torch.Tensor,
                           context_lens: torch.Tensor, scale: float, k_scale: torch.Tensor | None = None,
                           v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The same attention over a paged cache (an inference engine's decode rows).

    Args:
        q: (B, Hkv, T, D) queries, grouped query heads folded into T.
        k_pool: (num_blocks, block_size, Hkv, D) keys, v_pool (num_blocks, block_size, Hkv, Dv) values, in
            q's dtype or as int8 / float8_e4m3fn codes.
        block_tables: (B, M) int32, the blocks of each sequence in order.
        context_lens: (B,) int32, slots each sequence attends over (its first ones).
        scale: multiplier of the scores.
        k_scale, v_scale: (num_blocks, block_size, Hkv) float32 scales of quantized pools; None otherwise.
    Returns:
        (B, Hkv, T, Dv) in q's dtype.
    Requires :func:`load` to have returned True.
    """
    return torch.ops.llmkit.paged_decode_attention(q, k_pool, v_pool, block_tables, context_lens, scale,
                                                   k_scale, v_scale)


def _as_decode(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
               dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
               enable_gqa: bool = False) -> tuple | None:
    """An SDPA call's (q, k, v, mask (B or 1, S), scale) if the kernel computes it, else None.

    That is: CPU tensors of one supported dtype, equal head counts, no dropout, and a bool
    mask with one row per sequence (B or 1, 1, 1, S).
    """
    m = attn_mask
    if (m is None or m.dtype != torch.bool or m.dim() != 4 or m.shape[1] != 1 or m.shape[2] != 1 or is_causal
            or dropout_p != 0.0 or query.device.type != "cpu" or query.dim() != 4
            or query.shape[1] != key.shape[1] or not query.dtype == key.dtype == value.dtype
            or query.dtype not in DTYPES):
        return None
    return query, key, value, m.reshape(m.shape[0], m.shape[-1]), query.shape[-1] ** -0.5 if scale is None else scale


class DecodeAttention(TorchFunctionMode):
    """While active, decode-shaped ``F.scaled_dot_product_attention`` calls run the C++ kernel.

    Meant for traced (compiled) steps; :func:`load` must have returned True.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            call = _as_decode(*args, **kwargs)
            if call is not None:
                return decode_attention(*call)
        return func(*args, **kwargs)
