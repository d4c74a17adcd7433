"""KV-cache quantization: int8 or fp8 (e4m3) keys and values with one scale per (token, head).

Decoding reads the whole KV cache every step, so at long context the cache,
not the weights, is what a step waits for, and what limits how many
sequences an engine can hold. Storing K and V in 8 bits halves that against
bf16 (a quarter against fp32).

Granularity: one symmetric scale per (token, head) row of ``head_dim``
values, the row's absmax mapped onto the code's largest value (127 for int8,
448 for e4m3). A token's K/V is written once and never revised, so its scale
is fixed on write from that row alone: no calibration, and no rescaling of
older entries as a running per-tensor scale would need. Rows are small, so an
outlier channel costs precision only in its own token and head (KIVI, Liu et
al. 2024, and vLLM's per-token-head fp8 scales make the same choice). The
scales are fp32, 4 bytes per row: a 64-dim head takes 68 bytes instead of 128
in bf16 (1.9x).

The quantizer is :mod:`llmkit.quant.primitives`' per-row symmetric int8 and
e4m3 code; the caches (:mod:`llmkit.model.kv_cache`, :mod:`llmkit.model.paged`)
quantize on write, and the CPU decode kernel
(:mod:`llmkit.generate.decode_attention`) multiplies codes by their scale as
it widens rows to fp32, never materialising a dequantized cache; the other
paths dequantize what they gather with :func:`dequantize_kv`.
"""
from __future__ import annotations

import torch

from llmkit.quant.primitives import affine_params, quantize_affine, quantize_fp8

# kv_cache_dtype name -> storage dtype; None and "auto" keep the model's dtype
KV_CACHE_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
SCALE_DTYPE = torch.float32


def kv_storage_dtype(kv_cache_dtype: str | None) -> torch.dtype | None:
    """The code dtype of ``kv_cache_dtype``, or None for an unquantized cache.

    Raises:
        ValueError: a name other than None, "auto", "int8" or "fp8".
    """
    if kv_cache_dtype is None or kv_cache_dtype == "auto":
        return None
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype={kv_cache_dtype!r}: choose from auto, {', '.join(KV_CACHE_DTYPES)}")
    return KV_CACHE_DTYPES[kv_cache_dtype]


def quantize_kv(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and scales of K or V rows.

    Args:
        x: (..., D) keys or values, one row per (token, head).
        dtype: ``torch.int8`` or ``torch.float8_e4m3fn``.
    Returns:
        codes (..., D) in ``dtype`` and scales (...) float32, with x ~= codes * scale[..., None].
    """
    if dtype == torch.int8:
        scale, _ = affine_params(x, 8)
        codes = quantize_affine(x, scale, None, 8)
    else:
        codes, scale = quantize_fp8(x, "e4m3")
    return codes, scale[..., 0]


def store_kv(codes: torch.Tensor, scales: torch.Tensor, dim: int, index: torch.Tensor, x: torch.Tensor) -> None:
    """Quantize rows ``x`` into a cache: ``codes``/``scales`` at positions ``index`` along ``dim``.

    Args:
        codes: (..., D) int8 or e4m3 cache; scales: its float32 scales, shaped like it without D.
        dim: the cache's slot dimension; index: (T,) slots; x: rows shaped like ``codes`` with T slots.
    """
    q, s = quantize_kv(x, codes.dtype)
    codes.view(torch.uint8).index_copy_(dim, index, q.view(torch.uint8))  # as bytes: no fp8 index_copy_ on CPU
    scales.index_copy_(dim, index, s)


def dequantize_kv(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes (..., D) * scale (...) in fp32, returned in ``dtype``: what the decode kernel computes."""
    return (codes.float() * scale[..., None]).to(dtype)


def kv_row_bytes(dim: int, dtype: torch.dtype, kv_cache_dtype: str | None = None) -> int:
    """Bytes one (token, head) row of ``dim`` values takes: in ``dtype``, or codes plus their scale."""
    storage = kv_storage_dtype(kv_cache_dtype)
    if storage is None:
        return dim * dtype.itemsize
    return dim * storage.itemsize + SCALE_DTYPE.itemsize
