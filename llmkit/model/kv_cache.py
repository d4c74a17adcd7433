"""Static key/value caches (gpt-fast style): preallocated once, written by slot index.

A fixed shape keeps ``torch.compile`` from recompiling as the sequence grows;
attention reads the whole buffer under a mask that hides unwritten slots.
``input_pos`` (the slots the current tokens occupy) is always passed in
explicitly, so a paged cache can later sit behind the same ``update`` call.
"""
from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Per-layer K and V buffers, each (max_batch, kv_heads, max_seq, head_dim)."""

    def __init__(self, max_batch: int, kv_heads: int, max_seq: int, k_dim: int, v_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None):
        super().__init__()
        self.register_buffer("k", torch.zeros(max_batch, kv_heads, max_seq, k_dim, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(max_batch, kv_heads, max_seq, v_dim, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H, T, D) at slots ``input_pos`` (T,); return the batch's full buffers (B, H, S, D)."""
        b = k.shape[0]
        self.k[:b].index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v[:b].index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k[:b], self.v[:b]


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
