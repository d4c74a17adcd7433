"""Static key/value caches (gpt-fast style): preallocated once, written by slot index.

A fixed shape keeps ``torch.compile`` from recompiling as the sequence grows;
attention reads the whole buffer under a mask that hides unwritten slots.
``input_pos`` (the slots the current tokens occupy) is always passed in
explicitly, so a paged cache can later sit behind the same ``update`` call.

A quantized cache (``kv_cache_dtype`` "int8" or "fp8", :mod:`llmkit.quant.kv`)
stores codes and a scale per (token, head) and is read the same way by every
query, prompt or decode: attention always sees the stored (quantized) K/V, so
a prefill's logits equal those of decoding the same tokens one by one. Decode
steps on CPU read the codes in place through the C++ kernel the caller hands
in (``decode_kernel``, :mod:`llmkit.generate.decode_attention`, which the model
does not import); other reads dequantize the buffers.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from llmkit.quant.kv import SCALE_DTYPE, dequantize_kv, kv_storage_dtype, store_kv


class KVCache(nn.Module):
    """Per-layer K and V buffers, each (max_batch, kv_heads, max_seq, head_dim).

    Args:
        dtype: the activations' dtype (that of an unquantized cache).
        kv_cache_dtype: None or "auto" (store in ``dtype``), "int8" or "fp8": store codes in ``k``/``v``
            and float32 scales (max_batch, kv_heads, max_seq) in ``k_scale``/``v_scale``.
        decode_kernel: for a quantized cache, ``decode_attention(q, k, v, mask, scale, k_scale, v_scale)``
            that attends one query per head over the codes in place (:meth:`decode`); None = dequantize.
    """

    def __init__(self, max_batch: int, kv_heads: int, max_seq: int, k_dim: int, v_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None, kv_cache_dtype: str | None = None,
                 decode_kernel: Callable[..., torch.Tensor] | None = None):
        super().__init__()
        storage = kv_storage_dtype(kv_cache_dtype)
        self.quantized = storage is not None
        self.decode_kernel = decode_kernel if self.quantized else None
        shape = (max_batch, kv_heads, max_seq)
        self.register_buffer("k", torch.zeros(*shape, k_dim, dtype=storage or dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(*shape, v_dim, dtype=storage or dtype, device=device), persistent=False)
        if self.quantized:
            for name in ("k_scale", "v_scale"):
                self.register_buffer(name, torch.zeros(shape, dtype=SCALE_DTYPE, device=device), persistent=False)

    def _write(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        b = k.shape[0]
        if not self.quantized:
            self.k[:b].index_copy_(2, input_pos, k.to(self.k.dtype))
            self.v[:b].index_copy_(2, input_pos, v.to(self.v.dtype))
            return
        store_kv(self.k[:b], self.k_scale[:b], 2, input_pos, k)
        store_kv(self.v[:b], self.v_scale[:b], 2, input_pos, v)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H, T, D) at slots ``input_pos`` (T,); return the batch's full buffers (B, H, S, D)
        (dequantized to k's dtype when the cache is quantized)."""
        b = k.shape[0]
        self._write(input_pos, k, v)
        if not self.quantized:
            return self.k[:b], self.v[:b]
        return dequantize_kv(self.k[:b], self.k_scale[:b], k.dtype), dequantize_kv(self.v[:b], self.v_scale[:b], v.dtype)

    def decode(self, input_pos: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
               scale: float) -> torch.Tensor:
        """A decode step through ``decode_kernel``: write k, v (B, Hkv, 1, D), attend q (B, H, 1, D) over the
        codes under mask (B or 1, 1, 1, S); returns (B, H, 1, Dv)."""
        self._write(input_pos, k, v)
        b, h, _, d = q.shape
        hkv = self.k.shape[1]
        y = self.decode_kernel(q.reshape(b, hkv, h // hkv, d), self.k[:b], self.v[:b],  # grouped heads fold into T
                               mask.reshape(mask.shape[0], -1), scale, self.k_scale[:b], self.v_scale[:b])
        return y.reshape(b, h, 1, -1)


class LatentCache(nn.Module):
    """MLA cache: the compressed latent c_kv (B, S, kv_lora_rank) and the shared rotated key (B, S, rope_dim).

    This is DeepSeek-V2's memory saving: (kv_lora_rank + rope_dim) numbers per token
    instead of 2 * n_heads * head_dim.
    """

    def __init__(self, max_batch: int, max_seq: int, kv_lora_rank: int, rope_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None):
        super().__init__()
        self.register_buffer("c_kv", torch.zeros(max_batch, max_seq, kv_lora_rank, dtype=dtype, device=device), persistent=False)
        self.register_buffer("k_pe", torch.zeros(max_batch, max_seq, rope_dim, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, c_kv: torch.Tensor, k_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write c_kv (B, T, R) and k_pe (B, T, P) at slots ``input_pos``; return the full buffers for the batch."""
        b = c_kv.shape[0]
        self.c_kv[:b].index_copy_(1, input_pos, c_kv.to(self.c_kv.dtype))
        self.k_pe[:b].index_copy_(1, input_pos, k_pe.to(self.k_pe.dtype))
        return self.c_kv[:b], self.k_pe[:b]
