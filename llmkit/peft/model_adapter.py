"""`ModelAdapter`: what the whole-model adapters (prompt, P- and prefix tuning) share.

Those methods wrap a whole ``CausalLM`` (kept as ``base_model``) and put n
virtual tokens in front of every sequence. The wrapper offers the model's
inference interface (``cfg``, ``dtype``, ``device``, ``setup_caches`` /
``clear_caches`` / ``has_cache`` / ``cache_len``, ``reorder_cache``, and
``forward(input_ids, input_pos=, attention_mask=, return_aux_loss=,
logits_to_keep=)``), so the Trainer, ``generate`` and beam search run it
exactly as they run the base model. The caller sees only its own tokens: its
slot and position 0 is its first token; the virtual tokens' positions come first
and are not the caller's concern, which is why ``cfg.max_seq_len`` is the base's
minus n.

A tied LM head is untied (a frozen copy, so the math is unchanged): under the
wrapper the pair is named ``base_model.…`` and a checkpoint cannot store it as
one tensor (safetensors refuses shared tensors), so the wrapper's config says
untied and its state dict holds both.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from llmkit.peft.base import Adapter


class ModelAdapter(Adapter):
    """Delegates the inference interface to ``base_model``; subclasses define ``forward``.

    Args:
        base_model: the wrapped ``CausalLM``.
        n_virtual: virtual tokens in front of every sequence (they take the first n positions).
        cache_slots: cache slots those tokens take per sequence: n when they run through the model
            (prompt tuning), 0 when their keys and values come from parameters (prefix tuning).
    """

    def __init__(self, base_model: nn.Module, n_virtual: int, cache_slots: int):
        super().__init__()
        self.base_model, self.n_virtual, self.cache_slots = base_model, n_virtual, cache_slots
        head = base_model.lm_head
        if head.weight is base_model.model.embed_tokens.weight:
            head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        self.cfg = base_model.cfg.replace(max_seq_len=base_model.cfg.max_seq_len - n_virtual, tie_word_embeddings=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.base_model.dtype

    @property
    def device(self) -> torch.device:
        return self.base_model.device

    def setup_caches(self, max_batch_size: int, max_seq_len: int, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None, kv_cache_dtype: str | None = None,
                     decode_kernel: Callable[..., torch.Tensor] | None = None) -> None:
        """A static cache for ``max_seq_len`` of the caller's tokens (plus the slots the virtual ones take)."""
        self.base_model.setup_caches(max_batch_size, max_seq_len + self.cache_slots, dtype, device, kv_cache_dtype,
                                     decode_kernel)

    def clear_caches(self) -> None:
        self.base_model.clear_caches()

    @property
    def has_cache(self) -> bool:
        return self.base_model.has_cache

    @property
    def cache_len(self) -> int:
        """The caller's slots per sequence (0 without a cache)."""
        return max(self.base_model.cache_len - self.cache_slots, 0)

    def reorder_cache(self, indices: torch.Tensor) -> None:
        self.base_model.reorder_cache(indices)
