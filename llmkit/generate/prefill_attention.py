"""A C++ flash-attention kernel for the prompt chunks of an engine step on CPU.

An engine step attends each prompt chunk causally over its sequence's cached
prefix and itself. torch's CPU flash attention reaches 26-68 GFLOP/s on
SmolLM2's prompt shapes (9 query heads over 3 K/V heads of 64 dims, 128-512
tokens, bf16 or fp32, 2 Zen 4 cores), which made prompt attention about a
quarter of a prefill step's time. ``prefill_attention.cpp`` is the flash
attention recipe (Dao et al. 2022) with register-tiled products: each
sequence's K and V are copied once out of their blocks into a layout the
products read with plain vector loads (pairs of bf16 values for
AVX512-BF16's ``vdpbf16ps``, or K transposed for fp32 fused multiply-adds),
then tiles of query rows (positions times the grouped query heads of one K/V
head) run an online softmax over blocks of 32 slots, skipping the blocks past
a tile's last position. Reading the pool through the block tables also spares
the gather that SDPA needed for a chunk after a cached prefix.

It needs AVX-512 (fp32) or AVX512-BF16 (bf16); :func:`supported` says whether
this CPU and shape take it. Elsewhere, and for quantized pools or masks other
than causal, :func:`llmkit.model.paged.paged_attention` keeps SDPA. Built on
first use like the other kernels (:mod:`llmkit.generate.decode_attention`).
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from llmkit import native

SOURCE = Path(__file__).with_name("prefill_attention.cpp")


@functools.cache
def load() -> bool:
    """Build (once per machine) and load the kernel; False, with a warning, if that fails."""
    if not native.build("llmkit_prefill_attention", [SOURCE], ["-O3", "-march=native", "-ffast-math", "-fopenmp"],
                        "the CPU prefill-attention kernel", "prompt chunks keep torch's attention"):
        return False
    torch.library.register_fake("llmkit::paged_prefill_attention")(_shape)
    return True


def _shape(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, block_tables: torch.Tensor,
           query_lens: list[int], context_lens: list[int], scale: float) -> torch.Tensor:
    return q.new_empty(*q.shape[:-1], v_pool.shape[-1])


def supported(dtype: torch.dtype, head_dim: int, v_head_dim: int) -> bool:
    """Whether the kernel takes CPU queries and unquantized pools of ``dtype`` with these head sizes on this machine
    (a CPU without AVX-512 does not build it at all)."""
    return (torch.backends.cpu.get_cpu_capability() == "AVX512" and load()
            and torch.ops.llmkit.paged_prefill_supported(dtype, head_dim, v_head_dim))


def paged_prefill_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, block_tables: torch.Tensor,
                            query_lens: list[int], context_lens: list[int], scale: float) -> torch.Tensor:
    """Causal attention of B prompt chunks over their paged caches, their own K/V already written.

    Args:
        q: (N, H, D) queries, the B chunks end to end (N = sum of ``query_lens``); H a multiple of Hkv.
        k_pool: (num_blocks, block_size, Hkv, D) keys, v_pool (num_blocks, block_size, Hkv, Dv) values,
            in q's dtype.
        block_tables: (B, M) int32, the blocks of each sequence in order.
        query_lens: B ints, the chunks' lengths; chunk i's queries are the last ``query_lens[i]`` of the
            first ``context_lens[i]`` slots, and query r sees slots up to its own.
        context_lens: B ints.
        scale: multiplier of the scores.
    Returns:
        (N, H, Dv) in q's dtype.
    Requires :func:`supported` to have returned True.
    """
    return torch.ops.llmkit.paged_prefill_attention(q, k_pool, v_pool, block_tables, query_lens, context_lens,
                                                    scale)
