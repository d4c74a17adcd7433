"""Prefix tuning: trainable key/value prefixes in every attention layer, through the KV-cache interface.

Prefix tuning (Li & Liang 2021, arXiv:2101.00190) prepends n trainable key and
value vectors to every layer's attention, leaving all weights frozen. Learning
them directly is unstable, so the paper reparameterises: a small embedding
(n, dim) goes through an MLP (dim -> hidden -> tanh -> n_layers * 2 * kv_dim)
that emits all layers' prefixes at once. (After training, the MLP's output
could be stored instead; we keep the MLP so the module trains and infers alike.)

Design: the prefix enters through the static KV cache, so the attention code
is untouched.
- The prefix occupies cache slots 0..n-1 of every layer; the caller's slot p
  becomes p + n, so real tokens sit at positions n, n+1, ... (what peft gets in
  transformers, where the prefix is a ``past_key_values`` of length n). Prefix
  keys are learned vectors and are not rotated.
- Each layer's ``kv_cache`` is wrapped by :class:`PrefixCache`, whose
  ``update(input_pos, k, v)`` first writes the current prefix K/V into slots
  0..n-1 and then the tokens' K/V, returning the whole buffer like the plain
  cache. Because the prefix is rewritten from the live parameters on every
  call, a cache never holds stale prefix values and gradients reach the encoder.
- ``PrefixTuningLM.forward`` computes the prefixes once per call and hands each
  layer's cache its slice. A call without ``input_pos`` (training, scoring)
  runs on a temporary cache of exactly n + T slots, which is dropped afterwards
  (the caller's caches, if any, are put back).

Only MHA/GQA/MQA attention (``KVCache``) is supported; MLA's latent cache
stores a compressed form that a key/value prefix does not map onto.
"""
from __future__ import annotations

import torch
from torch import nn

from llmkit.peft.base import Adapter, freeze_all_but_adapters


class PrefixEncoder(nn.Module):
    """Reparameterised prefixes: (n, dim) embedding -> MLP -> (n_layers, 2, kv_heads, n, head_dim)."""

    def __init__(self, n_layers: int, n_prefix: int, kv_heads: int, head_dim: int, dim: int, hidden: int = 512):
        super().__init__()
        self.shape = (n_prefix, n_layers, 2, kv_heads, head_dim)
        self.embedding = nn.Parameter(torch.randn(n_prefix, dim))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, n_layers * 2 * kv_heads * head_dim))

    def forward(self) -> torch.Tensor:
        return self.mlp(self.embedding).view(self.shape).permute(1, 2, 3, 0, 4)  # (L, 2, Hkv, n, D)


class PrefixCache(nn.Module):
    """A ``KVCache`` whose slots 0..n-1 always hold the current prefix (set in ``prefix`` before each call)."""

    def __init__(self, inner: nn.Module, n_prefix: int):
        super().__init__()
        self.inner, self.n_prefix = inner, n_prefix
        self.prefix: tuple[torch.Tensor, torch.Tensor] | None = None  # (Hkv, n, D) each

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the prefix at slots 0..n-1 and k, v (B, Hkv, T, D) at ``input_pos``; return (B, Hkv, S, D) buffers."""
        pk, pv = self.prefix
        b = k.shape[0]
        slots = torch.arange(self.n_prefix, device=k.device)
        self.inner.update(slots, pk.expand(b, -1, -1, -1), pv.expand(b, -1, -1, -1))
        return self.inner.update(input_pos, k, v)


class PrefixTuningLM(Adapter):
    """A ``CausalLM`` with trainable per-layer key/value prefixes.

    Args:
        base_model: an llmkit ``CausalLM`` with standard (non-MLA) attention.
        n_prefix: prefix length n.
        hidden: width of the reparameterisation MLP.
    """

    def __init__(self, base_model: nn.Module, n_prefix: int = 10, hidden: int = 512):
        super().__init__()
        cfg = base_model.cfg
        if cfg.attention != "mha":
            raise ValueError(f"prefix tuning needs a key/value cache; attention={cfg.attention!r} is not supported")
        self.base_model, self.n_prefix = base_model, n_prefix
        device = base_model.lm_head.weight.device
        self.prefix_encoder = PrefixEncoder(cfg.n_layers, n_prefix, cfg.kv_heads, cfg.head_size, cfg.dim, hidden).to(device)

    def _attn(self) -> list[nn.Module]:
        return [layer.self_attn for layer in self.base_model.model.layers]

    def setup_caches(self, max_batch_size: int, max_seq_len: int, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> None:
        """Static caches for ``max_seq_len`` real tokens plus the prefix, each wrapped in a :class:`PrefixCache`."""
        self.base_model.setup_caches(max_batch_size, max_seq_len + self.n_prefix, dtype, device)
        for attn in self._attn():
            attn.kv_cache = PrefixCache(attn.kv_cache, self.n_prefix)

    def clear_caches(self) -> None:
        self.base_model.clear_caches()

    def forward(self, input_ids: torch.Tensor, input_pos: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, logits_to_keep: int = 0) -> torch.Tensor:
        """Logits (B, T, vocab); ``input_pos`` are the caller's slots (0-based), given after ``setup_caches``."""
        if not self.enabled:
            if input_pos is not None:
                raise RuntimeError("with adapters disabled, a prefix-tuned model runs uncached only")
            return self.base_model(input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep)
        b, t = input_ids.shape
        if input_pos is not None:
            return self._run(input_ids, input_pos, attention_mask, logits_to_keep)
        saved = [attn.kv_cache for attn in self._attn()], self.base_model.cache_len
        self.setup_caches(b, t, device=input_ids.device)
        try:
            return self._run(input_ids, torch.arange(t, device=input_ids.device), attention_mask, logits_to_keep)
        finally:  # put the caller's caches back (CausalLM keeps their length in cache_len)
            for attn, cache in zip(self._attn(), saved[0]):
                attn.kv_cache = cache
            self.base_model.cache_len = saved[1]

    def _run(self, input_ids: torch.Tensor, input_pos: torch.Tensor, attention_mask: torch.Tensor | None,
             logits_to_keep: int = 0):
        n = self.n_prefix
        prefixes = self.prefix_encoder()  # (L, 2, Hkv, n, D)
        caches = [attn.kv_cache for attn in self._attn()]
        if not all(isinstance(c, PrefixCache) for c in caches):
            raise RuntimeError("set up caches through PrefixTuningLM.setup_caches, not on the base model")
        for cache, kv in zip(caches, prefixes):
            cache.prefix = (kv[0], kv[1])
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(input_ids.shape[0], n), attention_mask], dim=1)
        try:
            return self.base_model(input_ids, input_pos=input_pos + n, attention_mask=attention_mask,
                                   logits_to_keep=logits_to_keep)
        finally:
            for cache in caches:
                cache.prefix = None


def apply_prefix_tuning(model: nn.Module, n_prefix: int = 10, hidden: int = 512) -> PrefixTuningLM:
    """Wrap ``model`` for prefix tuning and freeze everything but the prefix encoder."""
    wrapped = PrefixTuningLM(model, n_prefix, hidden)
    freeze_all_but_adapters(wrapped)
    return wrapped
