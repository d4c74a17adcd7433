"""`AttentionMetadata`: the per-forward inputs every attention layer shares, passed as an argument.

``CausalLM.forward`` computes these once (cache slots, RoPE angles, the mask)
and hands the same object to every block, which hands it to its attention.
Nothing here is global, so two models (or two engines) can run side by side,
and an inference engine passes its paged-KV inputs (:class:`PagedMetadata`:
slot mapping, block tables, context lengths) the same way, together with the
block pool itself, without touching the block code.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import torch


@dataclass
class PagedMetadata:
    """Where a flattened batch of sequences reads and writes a paged KV pool (an engine step).

    The step's tokens are flattened into one row of N tokens, sequence after sequence; the
    first ``num_decodes`` sequences contribute one token each (decodes), the rest a chunk of
    their prompt (prefill). K/V live in fixed-size blocks of a pool shared by all sequences;
    a sequence's block table lists its blocks in order.

    Attributes:
        caches: one paged cache per layer (``llmkit.model.paged.PagedKVCache`` or ``PagedLatentCache``).
        slot_mapping: (N,) int64, pool slot (block * block_size + offset) each token's K/V is written to.
        block_tables: (B, M) int32, the blocks of each sequence (unused entries arbitrary).
        context_lens: (B,) int32, tokens of each sequence in the cache once this step's are written.
        query_lens: B host ints, this step's tokens of each sequence (they sum to N).
        host_context_lens: ``context_lens`` as B host ints (slicing without a device sync); None in a
            compiled decode-only step, whose shapes must not depend on them.
        num_decodes: how many leading sequences have exactly one token.
        chunk_masks: sequence index -> (T, T) bool mask among that sequence's T new tokens, replacing
            the causal one (lookahead decoding's branches); None or absent = causal.
        decode_kernel: the CPU kernel for the decode rows (``paged_decode_attention`` of
            ``llmkit.generate.decode_attention``, which the engine builds); None = gather + SDPA.
        prefill_kernel: the CPU kernel for the prompt chunks (``paged_prefill_attention`` of
            ``llmkit.generate.prefill_attention``), used for causal chunks over an unquantized pool;
            None = SDPA, one sequence at a time.
    """

    caches: list[Any]
    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    query_lens: list[int]
    host_context_lens: list[int] | None
    num_decodes: int
    chunk_masks: dict[int, torch.Tensor] | None = None
    decode_kernel: Callable[..., torch.Tensor] | None = None
    prefill_kernel: Callable[..., torch.Tensor] | None = None


@dataclass
class AttentionMetadata:
    """Inputs of attention for one forward over T tokens.

    Attributes:
        input_pos: (T,) cache slots the tokens are written to; None = no cache (attend over this call's keys).
        rope: (cos, sin), each (B, T, rotary_dim), the RoPE angles of the tokens' positions; None without RoPE.
        mask: bool (B or 1, 1, T, S), True = may attend; None = plain causal over T == S keys (the fused path).
            With ``prefix_kv`` the mask covers its n columns first, then the S keys.
        prefix_kv: (n_layers, 2, Hkv, n, D) virtual keys and values each layer attends to before the
            tokens' own (prefix tuning); None = none.
        paged: the paged-KV inputs of an engine step (batch of one flattened row); None = static or no cache.
    """

    input_pos: torch.Tensor | None = None
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    mask: torch.Tensor | None = None
    prefix_kv: torch.Tensor | None = None
    paged: PagedMetadata | None = None
