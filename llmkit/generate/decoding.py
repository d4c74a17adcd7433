"""What both decoders (the token loop and beam search) share: the result record, the context check,
cache sizing, the cache-wide mask, prompt-token sets and the cached forward of the last position.

Everything goes through the model's inference interface (``cfg``, ``setup_caches``,
``cache_len``, ``forward``), so a whole-model adapter decodes like a plain ``CausalLM``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from llmkit.generate import decode_attention
from llmkit.model import CausalLM
from llmkit.quant.kv import kv_storage_dtype

FinishReason = Literal["stop", "length"]
EAGER_BUCKET = 64  # eager decoding: cache lengths are multiples of this
MIN_COMPILED_CACHE = 256  # compiled decoding: cache lengths are powers of two from this


@dataclass
class TokenResult:
    """Generated ids per row.

    ``token_ids[i]`` ends with the stop id that ended row ``i`` when one did
    (``finish_reasons[i] == "stop"``); ``"length"`` means ``max_new_tokens`` (or the
    context) ran out first.
    """

    token_ids: list[list[int]]
    finish_reasons: list[FinishReason]


def check_context(model: CausalLM, prompt_len: int, max_new_tokens: int) -> int:
    """``max_new_tokens`` clipped to the context left after the prompt; ValueError if nothing is left."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    context = model.cfg.max_seq_len
    if prompt_len >= context:
        raise ValueError(f"the prompt has {prompt_len} tokens but the model's context is {context}: "
                         "shorten the prompt")
    return min(max_new_tokens, context - prompt_len)


def setup_cache(model: CausalLM, batch: int, length: int, compiled: bool = False,
                kv_cache_dtype: str | None = None) -> int:
    """Make sure the model has a static cache for ``batch`` rows of at least ``length`` slots.

    The length is rounded up to its bucket (see :mod:`llmkit.generate.loop`; within the model's
    context), and an existing cache of exactly that shape and the model's dtype is kept.
    ``kv_cache_dtype`` "int8"/"fp8" quantizes it; on CPU its decode steps then read it with the
    C++ kernel (when it builds), eager or compiled.

    Returns:
        The cache length S.
    """
    if compiled:
        bucket = max(MIN_COMPILED_CACHE, 1 << (length - 1).bit_length())
    else:
        bucket = -(-length // EAGER_BUCKET) * EAGER_BUCKET
    size = max(length, min(bucket, model.cfg.max_seq_len))
    kernel = None
    if kv_storage_dtype(kv_cache_dtype) is not None and model.device.type == "cpu" and decode_attention.load():
        kernel = decode_attention.decode_attention
    model.setup_caches(batch, size, kv_cache_dtype=kv_cache_dtype, decode_kernel=kernel)  # keeps a cache of this shape
    return size


def full_mask(attention_mask: torch.Tensor, cache_len: int) -> torch.Tensor:
    """(B, T) prompt mask -> (B, S) mask over the whole cache: the prompt's, then ones."""
    b, t = attention_mask.shape
    return torch.cat([attention_mask.long(), attention_mask.new_ones(b, cache_len - t, dtype=torch.long)], dim=1)


def prompt_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, V) bool: which tokens occur (unpadded) in each prompt, for the repetition penalty."""
    counts = torch.zeros(input_ids.shape[0], vocab_size, dtype=torch.long, device=input_ids.device)
    return counts.scatter_add_(1, input_ids, attention_mask.long()) > 0  # padding adds 0


def forward_last(model: CausalLM, tokens: torch.Tensor, input_pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cached forward of ``tokens`` (B, T) at slots ``input_pos`` (T,); float32 logits (B, V) of the last one."""
    return model(tokens, input_pos=input_pos, attention_mask=mask, logits_to_keep=1)[:, -1].float()
