"""Paged KV caches and the attention that reads them (vLLM's PagedAttention, Kwon et al. 2023).

An inference engine keeps K/V in one pool of fixed-size blocks shared by all
sequences; a sequence owns a list of blocks (its block table) that need not be
contiguous, so memory is allocated a block at a time, finished sequences free
theirs at once, and sequences with a common prefix can share its blocks.

A pool is ``(num_blocks, block_size, Hkv, D)`` per layer for K and for V (MLA
keeps its latent and shared rotary key instead), which is also a flat array of
``num_blocks * block_size`` slots: a token's K/V is written to its slot
(``slot_mapping``), and attention reads a sequence's slots through its block
table. One engine step is one flattened row of tokens (see
:class:`~llmkit.model.metadata.PagedMetadata`): decode rows (one query each)
attend in one batched call, through the C++ kernel of
:mod:`llmkit.generate.decode_attention` on CPU (the engine hands it in as
``PagedMetadata.decode_kernel``), flash-attn's paged kernel on
CUDA when it is installed (and blocks hold a multiple of 256 slots), or a
gather + SDPA elsewhere;
prompt chunks attend causally over their cached prefix and themselves, all
in one call of the C++ kernel of :mod:`llmkit.generate.prefill_attention` on
CPU (``PagedMetadata.prefill_kernel``), else through SDPA one sequence at a time.

A pool may be quantized (``kv_cache_dtype`` "int8" or "fp8", :mod:`llmkit.quant.kv`):
codes plus a (num_blocks, block_size, Hkv) pool of fp32 scales. As with the static
cache, every query reads K/V as stored, its own included, so the engine's numbers
are those of ``llmkit.generate`` with the same ``kv_cache_dtype``: the C++ kernel
dequantizes rows as it reads them, the other paths dequantize what they gather.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from llmkit.model.metadata import PagedMetadata
from llmkit.quant.kv import SCALE_DTYPE, dequantize_kv, kv_row_bytes, kv_storage_dtype, store_kv


class PagedKVCache:
    """One layer's K and V pools, each (num_blocks, block_size, Hkv, D).

    Args:
        dtype: the activations' dtype (that of an unquantized pool).
        kv_cache_dtype: None or "auto" (pools in ``dtype``), "int8" or "fp8": pools of codes, with
            float32 scales (num_blocks, block_size, Hkv) in ``k_scale``/``v_scale``.
    """

    def __init__(self, num_blocks: int, block_size: int, kv_heads: int, k_dim: int, v_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None, kv_cache_dtype: str | None = None):
        storage = kv_storage_dtype(kv_cache_dtype)
        self.block_size, self.dtype = block_size, dtype
        self.k = torch.zeros(num_blocks, block_size, kv_heads, k_dim, dtype=storage or dtype, device=device)
        self.v = torch.zeros(num_blocks, block_size, kv_heads, v_dim, dtype=storage or dtype, device=device)
        self.k_scale = self.v_scale = None
        if storage is not None:
            self.k_scale, self.v_scale = (torch.zeros(num_blocks, block_size, kv_heads, dtype=SCALE_DTYPE,
                                                      device=device) for _ in range(2))

    @staticmethod
    def slot_bytes(kv_heads: int, k_dim: int, v_dim: int, dtype: torch.dtype, kv_cache_dtype: str | None = None) -> int:
        """Bytes one token slot takes in a layer's pools (scales included)."""
        return kv_heads * (kv_row_bytes(k_dim, dtype, kv_cache_dtype) + kv_row_bytes(v_dim, dtype, kv_cache_dtype))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every pool, each indexed by block first (what copy-on-write copies)."""
        return tuple(t for t in (self.k, self.v, self.k_scale, self.v_scale) if t is not None)

    def write(self, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k (N, Hkv, D) and v (N, Hkv, Dv) at the pool slots ``slot_mapping`` (N,)."""
        if self.k_scale is None:
            self.k.view(-1, *self.k.shape[2:]).index_copy_(0, slot_mapping, k.to(self.k.dtype))
            self.v.view(-1, *self.v.shape[2:]).index_copy_(0, slot_mapping, v.to(self.v.dtype))
            return
        for x, codes, scales in ((k, self.k, self.k_scale), (v, self.v, self.v_scale)):
            store_kv(codes.view(-1, *codes.shape[2:]), scales.view(-1, scales.shape[-1]), 0, slot_mapping, x)

    def gather(self, block_table: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One sequence's first ``length`` keys (length, Hkv, D) and values (length, Hkv, Dv), dequantized."""
        keys, values = gather(self.k, block_table, length), gather(self.v, block_table, length)
        if self.k_scale is None:
            return keys, values
        return (dequantize_kv(keys, gather(self.k_scale, block_table, length), self.dtype),
                dequantize_kv(values, gather(self.v_scale, block_table, length), self.dtype))


class PagedLatentCache:
    """One MLA layer's latent pool (num_blocks, block_size, R) and shared rotary key pool (num_blocks, block_size, P)."""

    def __init__(self, num_blocks: int, block_size: int, kv_lora_rank: int, rope_dim: int, dtype: torch.dtype,
                 device: torch.device | str | None = None):
        self.block_size = block_size
        self.c_kv = torch.zeros(num_blocks, block_size, kv_lora_rank, dtype=dtype, device=device)
        self.k_pe = torch.zeros(num_blocks, block_size, rope_dim, dtype=dtype, device=device)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.c_kv, self.k_pe

    def write(self, slot_mapping: torch.Tensor, c_kv: torch.Tensor, k_pe: torch.Tensor) -> None:
        """Store c_kv (N, R) and k_pe (N, P) at the pool slots ``slot_mapping`` (N,)."""
        self.c_kv.view(-1, self.c_kv.shape[-1]).index_copy_(0, slot_mapping, c_kv.to(self.c_kv.dtype))
        self.k_pe.view(-1, self.k_pe.shape[-1]).index_copy_(0, slot_mapping, k_pe.to(self.k_pe.dtype))


def gather(pool: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` slots of one sequence: pool (num_blocks, bs, ...) -> (length, ...)."""
    blocks = -(-length // pool.shape[1])
    return pool[block_table[:blocks]].flatten(0, 1)[:length]


def causal_offset_mask(t: int, s: int, device: torch.device) -> torch.Tensor:
    """(T, S) bool: query i (the (S - T + i)-th token) sees keys up to itself."""
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(s - t)


def segment_mask(paged: PagedMetadata, i: int, t: int, ctx: int, device: torch.device) -> torch.Tensor | None:
    """(T, ctx) bool mask of sequence ``i``'s chunk over its context, or None when it is plainly causal with T == ctx."""
    intra = paged.chunk_masks.get(i) if paged.chunk_masks else None
    if intra is None:
        return None if t == ctx else causal_offset_mask(t, ctx, device)
    return torch.cat([torch.ones(t, ctx - t, dtype=torch.bool, device=device), intra.to(device)], dim=1)


def segments(paged: PagedMetadata, first: int = 0) -> Iterator[tuple[int, int, int, int]]:
    """(sequence index, first token, query length, context length) of sequences ``first`` on in the step."""
    start = sum(paged.query_lens[:first])
    for i in range(first, len(paged.query_lens)):
        t = paged.query_lens[i]
        yield i, start, t, paged.host_context_lens[i]
        start += t


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: PagedKVCache, paged: PagedMetadata,
                    scale: float) -> torch.Tensor:
    """Write this step's K/V into the pool and attend every query over its sequence's cache.

    Args:
        q: (N, H, D) queries of the flattened step; k (N, Hkv, D), v (N, Hkv, Dv) its new keys/values.
        cache: the layer's pools.
        paged: where each token goes and which blocks each sequence reads.
        scale: multiplier of the scores.
    Returns:
        (N, H, Dv)
    """
    cache.write(paged.slot_mapping, k, v)
    n, h, _ = q.shape
    out = q.new_empty(n, h, v.shape[-1])
    nd = paged.num_decodes
    if nd:
        longest = max(paged.host_context_lens[:nd]) if paged.host_context_lens is not None else None
        out[:nd] = decode_attention(q[:nd], cache.k, cache.v, paged.block_tables[:nd], paged.context_lens[:nd],
                                    longest, scale, paged.decode_kernel, cache.k_scale, cache.v_scale)
    if (paged.prefill_kernel is not None and len(paged.query_lens) > nd and not paged.chunk_masks
            and cache.k_scale is None and paged.host_context_lens is not None):  # every prompt chunk in one call
        out[nd:] = paged.prefill_kernel(q[nd:], cache.k, cache.v, paged.block_tables[nd:], paged.query_lens[nd:],
                                        paged.host_context_lens[nd:], scale)
        return out
    for i, start, t, ctx in segments(paged, first=nd):  # prompt chunks
        if t == ctx and cache.k_scale is None:  # nothing cached before this chunk: its own K/V are the whole context
            ks, vs = k[start:start + t], v[start:start + t]
        else:
            ks, vs = cache.gather(paged.block_tables[i], ctx)
        mask = segment_mask(paged, i, t, ctx, q.device)
        y = F.scaled_dot_product_attention(q[start:start + t].transpose(0, 1)[None], ks.transpose(0, 1)[None],
                                           vs.transpose(0, 1)[None], attn_mask=mask, is_causal=mask is None,
                                           scale=scale, enable_gqa=h != k.shape[1])  # (1, H, T, Dv)
        out[start:start + t] = y[0].transpose(0, 1)
    return out


def flash_paged_ok(q: torch.Tensor, k_pool: torch.Tensor) -> bool:
    """Whether flash-attn's paged decode applies: CUDA, fp16/bf16, flash-attn installed, and blocks of a
    multiple of 256 slots (its paged layout's constraint; choose ``block_size=256`` on a GPU to use it)."""
    if not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and k_pool.shape[1] % 256 == 0):
        return False
    return importlib.util.find_spec("flash_attn") is not None


def decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, block_tables: torch.Tensor,
                     context_lens: torch.Tensor, max_context: int | None, scale: float,
                     kernel: Callable[..., torch.Tensor] | None = None, k_scale: torch.Tensor | None = None,
                     v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """One query per sequence over its paged cache: q (B, H, D) -> (B, H, Dv).

    ``kernel`` (``llmkit.generate.decode_attention.paged_decode_attention``, or None) reads the blocks
    in place on CPU, grouped heads folded into the query rows; on CUDA flash-attn's paged kernel does when
    :func:`flash_paged_ok`; elsewhere (or without a compiler) the blocks are gathered into a padded (B, Hkv, S, D) batch for SDPA, ``max_context`` slots wide
    (None: the whole block table, a static width for a compiled step). ``k_scale``/``v_scale``
    (num_blocks, block_size, Hkv) are a quantized pool's scales (the kernel and the gather read them).
    """
    b, h, d = q.shape
    hkv = k_pool.shape[2]
    quantized = k_scale is not None
    if not quantized and flash_paged_ok(q, k_pool):  # flash-attn's paged kernel reads this very pool layout
        from flash_attn import flash_attn_with_kvcache

        y = flash_attn_with_kvcache(q[:, None], k_pool, v_pool, cache_seqlens=context_lens,
                                    block_table=block_tables, softmax_scale=scale)  # (B, 1, H, Dv)
        return y[:, 0]
    q = q.view(b, hkv, h // hkv, d)  # grouped query heads folded into the row axis
    if kernel is not None and q.device.type == "cpu" and (quantized or q.dtype == k_pool.dtype):
        y = kernel(q, k_pool, v_pool, block_tables, context_lens, scale, k_scale, v_scale)
        return y.reshape(b, h, -1)
    if max_context is None:
        max_context = block_tables.shape[1] * k_pool.shape[1]
    blocks = -(-max_context // k_pool.shape[1])

    def batch(pool: torch.Tensor) -> torch.Tensor:  # (B, S, Hkv, ...): each sequence's first max_context slots
        return pool[block_tables[:, :blocks]].flatten(1, 2)[:, :max_context]

    keys, values = batch(k_pool), batch(v_pool)
    if quantized:
        keys, values = dequantize_kv(keys, batch(k_scale), q.dtype), dequantize_kv(values, batch(v_scale), q.dtype)
    keys, values = keys.transpose(1, 2), values.transpose(1, 2)  # (B, Hkv, S, D)
    mask = torch.arange(max_context, device=q.device)[None] < context_lens[:, None]  # (B, S)
    y = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask[:, None, None],
                                       scale=scale)
    return y.reshape(b, h, -1)
