"""`CausalLM`: the decoder-only language model every other part of llmkit trains, adapts and serves.

Layout and parameter names are Hugging Face's (``model.embed_tokens``,
``model.layers.N.self_attn.q_proj``, ``model.norm``, ``lm_head``), so an HF
LLaMA-family state dict loads without renaming. Attention metadata (cache
slots, RoPE angles, mask) is computed once per forward here and handed to
every block as one :class:`~llmkit.model.metadata.AttentionMetadata`
argument; nothing is global.

Two calling modes:
- training / scoring: ``model(input_ids)`` runs causally over the whole sequence;
- cached decoding (gpt-fast style): ``model.setup_caches(B, S)`` once, then
  ``model(ids, input_pos=slots)`` appends to and attends over the static cache.

The inference interface other parts use, so that none reaches inside the
model: ``dtype``, ``device``, ``setup_caches`` / ``clear_caches`` /
``has_cache`` / ``cache_len``, ``reorder_cache`` (beam search), and the
``prefix_kv`` argument of ``forward`` (prefix tuning's virtual keys and values).
Whole-model adapters (:mod:`llmkit.peft.model_adapter`) offer the same interface.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.model.block import Block
from llmkit.model.kv_cache import KVCache, LatentCache
from llmkit.model.metadata import AttentionMetadata, PagedMetadata
from llmkit.model.moe import Router
from llmkit.model.norm import build_norm
from llmkit.model.positions import POSITIONS
from llmkit.quant.kv import kv_storage_dtype


class Decoder(nn.Module):
    """Embeddings, the block stack and the final norm (HF's ``model.`` prefix)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.positions_attr, build = POSITIONS[cfg.pos_embedding]
        setattr(self, self.positions_attr, build(cfg))
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        # post-LN blocks already end in a norm
        self.norm = build_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.norm_bias) if cfg.norm_placement != "post" else nn.Identity()

    @property
    def positions(self) -> nn.Module:
        """The position module (``embed(x, positions) -> (x, rope)``), under its HF attribute name."""
        return getattr(self, self.positions_attr)


class CausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self._cache_len = 0
        self.apply(self._init_weights)
        if cfg.deepnorm:
            self._deepnorm_gain()

    # ----- init -----
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, Router):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)

    def _deepnorm_gain(self) -> None:
        """DeepNet: scale the value/output and feed-forward weights by beta at init."""
        beta = self.cfg.deepnorm_beta
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("weight") and any(k in name for k in ("v_proj", "o_proj", "mlp.")) and p.dim() == 2:
                    p.mul_(beta)

    def rebuild_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute the non-persistent buffers (RoPE frequencies) on ``device``.

        A state dict does not hold them, so a model built on the meta device and loaded with
        ``load_state_dict(assign=True)`` calls this once.
        """
        if any(True for _ in self.model.positions.buffers()):  # RoPE; a learned table is a loaded weight
            _, build = POSITIONS[self.cfg.pos_embedding]
            setattr(self.model, self.model.positions_attr, build(self.cfg).to(device))

    # ----- what callers may ask -----
    def _first_float(self) -> torch.Tensor:
        """The first floating-point weight or buffer (a quantized linear's packed ints are skipped)."""
        for t in itertools.chain(self.parameters(), self.buffers()):
            if t.is_floating_point():
                return t
        raise RuntimeError("the model holds no floating-point tensor")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype activations run in (that of the embeddings and norms)."""
        return self._first_float().dtype

    @property
    def device(self) -> torch.device:
        return self._first_float().device

    # ----- caches -----
    def _caches(self) -> list[nn.Module]:
        return [layer.self_attn.kv_cache for layer in self.model.layers]

    def setup_caches(self, max_batch_size: int, max_seq_len: int, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None, kv_cache_dtype: str | None = None,
                     decode_kernel: Callable[..., torch.Tensor] | None = None) -> None:
        """Allocate a static KV cache (or MLA latent cache) of ``max_seq_len`` slots for every layer.

        A cache of exactly this batch size, length, dtype, device and kernel is kept as it is (no
        reallocation, so a compiled decode step keeps its buffers); its stale slots are harmless
        because the mask only lets a query see slots written in the current generation.
        ``kv_cache_dtype`` "int8" or "fp8" quantizes K/V (:class:`~llmkit.model.kv_cache.KVCache`,
        which ``decode_kernel`` then reads in place on decode steps); MLA's latent cache is not quantized.
        """
        cfg = self.cfg
        if max_seq_len > cfg.max_seq_len and cfg.pos_embedding == "learned":
            raise ValueError(f"max_seq_len={max_seq_len} exceeds the learned position table ({cfg.max_seq_len})")
        storage = kv_storage_dtype(kv_cache_dtype)
        if storage is not None and cfg.attention == "mla":
            raise ValueError(f"kv_cache_dtype={kv_cache_dtype!r}: MLA's latent cache is not quantized; use auto")
        dtype = dtype or self.dtype
        device = torch.device(device) if device is not None else self.device
        if storage is None:
            decode_kernel = None  # only a quantized cache is read through it
        if self.has_cache:
            cache = self._caches()[0]
            first = next(cache.buffers())
            same_device = first.device == device or (device.index is None and first.device.type == device.type)
            # a quantized cache serves any activation dtype: its reads come back in the query's
            if ((first.shape[0], self._cache_len, first.dtype) == (max_batch_size, max_seq_len, storage or dtype)
                    and same_device and getattr(cache, "decode_kernel", None) is decode_kernel):
                return
        for layer in self.model.layers:
            if cfg.attention == "mla":
                cache = LatentCache(max_batch_size, max_seq_len, cfg.kv_lora_rank, cfg.qk_rope_head_dim, dtype, device)
            else:
                cache = KVCache(max_batch_size, cfg.kv_heads, max_seq_len, cfg.head_size, cfg.head_size, dtype, device,
                                kv_cache_dtype, decode_kernel)
            layer.self_attn.kv_cache = cache
        self._cache_len = max_seq_len

    def clear_caches(self) -> None:
        """Free the caches; the model runs uncached until ``setup_caches`` again."""
        for layer in self.model.layers:
            layer.self_attn.kv_cache = None
        self._cache_len = 0

    @property
    def has_cache(self) -> bool:
        return self._cache_len > 0

    @property
    def cache_len(self) -> int:
        """Slots per sequence in the cache (0 without one)."""
        return self._cache_len

    def reorder_cache(self, indices: torch.Tensor) -> None:
        """Replace cache row ``i`` by row ``indices[i]`` in every layer (beam search: beams follow their parents)."""
        n = indices.numel()
        for cache in self._caches():
            for buf in cache.buffers():
                buf[:n] = buf[:n].index_select(0, indices)

    # ----- forward -----
    def forward(self, input_ids: torch.Tensor, input_pos: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                return_aux_loss: bool = False, logits_to_keep: int = 0, prefix_kv: torch.Tensor | None = None,
                paged: PagedMetadata | None = None, logits_indices: torch.Tensor | None = None):
        """Next-token logits.

        Args:
            input_ids: (B, T) token ids.
            input_pos: (T,) cache slots of these tokens; requires ``setup_caches``. None = no cache.
            attention_mask: (B, L) 0/1, 0 marking (left) padding. Without a cache L = T; with one,
                L covers the slots written so far (shorter is padded with ones).
            position_ids: (B, T) positions for RoPE/learned embeddings; by default the slot index,
                or the count of real tokens before each one when ``attention_mask`` is given (plus n
                with ``prefix_kv``).
            return_aux_loss: also return the MoE load-balancing loss (mean over MoE layers, 0 if dense).
            logits_to_keep: compute logits for only the last this-many positions (0 = all); a prefill
                that only samples the next token skips a (B, T, vocab) matmul.
            prefix_kv: (n_layers, 2, Hkv, n, D) keys and values every query attends to before the
                tokens (prefix tuning); the tokens take positions n, n+1, ... as if the prefix had
                been a prompt. Not stored in the cache.
            paged: an inference engine's step (:mod:`llmkit.engine`): ``input_ids`` (1, N) is the step's
                sequences flattened, ``position_ids`` (1, N) is required, and K/V are written to and
                read from the paged pools it names; the static cache is not used.
            logits_indices: (K,) compute logits for only these positions of the (flattened) row.
        Returns:
            logits (B, T or logits_to_keep, vocab) in the model dtype, or ``(logits, aux_loss)``.
        """
        cfg = self.cfg
        if paged is not None:
            return self._forward_paged(input_ids, position_ids, paged, logits_indices)
        b, t = input_ids.shape
        device = input_ids.device
        cached = input_pos is not None
        if cached and not self.has_cache:
            raise RuntimeError("input_pos given but no cache: call model.setup_caches(batch, seq_len) first")
        query_slots = input_pos if cached else torch.arange(t, device=device)  # (T,) where each token sits
        kv_len = self._cache_len if cached else t
        n_prefix = 0 if prefix_kv is None else prefix_kv.shape[3]
        if attention_mask is not None:
            attention_mask = _pad_mask(attention_mask.to(device), kv_len)
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, query_slots] + n_prefix
            else:
                position_ids = query_slots[None].expand(b, t) + n_prefix
        need_mask = cached or cfg.attn_impl == "eager" or prefix_kv is not None
        mask = build_mask(query_slots, kv_len, attention_mask, cfg.sliding_window, need=need_mask)
        if prefix_kv is not None:  # every query sees the whole prefix
            mask = torch.cat([mask.new_ones(*mask.shape[:-1], n_prefix), mask], dim=-1)

        x, rope = self.model.positions.embed(self.model.embed_tokens(input_ids), position_ids)
        meta = AttentionMetadata(input_pos=input_pos, rope=rope, mask=mask, prefix_kv=prefix_kv)
        aux_losses = []
        for layer in self.model.layers:
            x, aux = layer(x, meta)
            if aux is not None:
                aux_losses.append(aux)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        if logits_indices is not None:
            x = x[:, logits_indices]
        logits = self.lm_head(self.model.norm(x))
        if return_aux_loss:
            aux = torch.stack(aux_losses).mean() if aux_losses else logits.new_zeros(())
            return logits, aux
        return logits

    def _forward_paged(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None, paged: PagedMetadata,
                       logits_indices: torch.Tensor | None) -> torch.Tensor:
        """The engine's forward: (1, N) flattened tokens at ``position_ids`` -> logits (1, N or K, vocab)."""
        if position_ids is None or input_ids.shape[0] != 1:
            raise ValueError("a paged forward takes input_ids and position_ids of shape (1, N)")
        x, rope = self.model.positions.embed(self.model.embed_tokens(input_ids), position_ids)
        meta = AttentionMetadata(rope=rope, paged=paged)
        for layer in self.model.layers:
            x, _ = layer(x, meta)
        if logits_indices is not None:
            x = x[:, logits_indices]
        return self.lm_head(self.model.norm(x))

    # ----- bookkeeping -----
    @property
    def lm_head_tied(self) -> bool:
        """Whether the LM head is the embedding's matrix (not so once a quantised head has replaced it)."""
        return getattr(self.lm_head, "weight", None) is self.model.embed_tokens.weight

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (tied weights counted once)."""
        seen, total = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen or (exclude_embeddings and "embed" in name):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                        keep_quantized: bool = False) -> "CausalLM":
        """Load an HF model directory or a ``.gguf`` file (see ``llmkit.io.load_model``; ``keep_quantized``
        keeps a GGUF file's Q8_0/Q4_0/Q4_1/Q4_K/Q6_K weights in their blocks)."""
        from llmkit.io.load import load_model

        return load_model(path, dtype=dtype, device=device, keep_quantized=keep_quantized)

    def save_pretrained(self, directory, max_shard_bytes: int = 2 * 1024**3) -> None:
        """Write ``config.json`` + safetensors in HF layout (sharded above ``max_shard_bytes``)."""
        from llmkit.io.hf import save_hf

        save_hf(self, directory, max_shard_bytes=max_shard_bytes)


def _pad_mask(attention_mask: torch.Tensor, kv_len: int) -> torch.Tensor:
    """Right-pad a (B, L) 0/1 mask with ones to (B, kv_len)."""
    l = attention_mask.shape[1]
    if l > kv_len:
        raise ValueError(f"attention_mask has {l} columns but only {kv_len} positions are attended")
    if l < kv_len:
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], kv_len - l)], dim=1)
    return attention_mask


def build_mask(query_slots: torch.Tensor, kv_len: int, attention_mask: torch.Tensor | None,
               sliding_window: int | None, need: bool = False) -> torch.Tensor | None:
    """Boolean attention mask (B or 1, 1, T, kv_len), True = may attend.

    Query at slot p sees key slot j when j <= p, p - j < sliding_window, and j is not
    padding. Each query always sees itself, so padded rows never softmax over nothing.
    Returns None (plain causal, the fused fast path) when nothing beyond causality applies.
    """
    if attention_mask is None and sliding_window is None and not need:
        return None
    keys = torch.arange(kv_len, device=query_slots.device)
    q = query_slots[:, None]
    allowed = keys[None, :] <= q  # (T, S)
    if sliding_window is not None:
        allowed = allowed & (q - keys[None, :] < sliding_window)
    allowed = allowed[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]
        allowed = allowed | (keys[None, :] == q)[None, None]
    return allowed


def count_parameters(cfg: ModelConfig) -> int:
    """Parameter count of ``cfg`` (tied weights once) without building it: llmkit's one counter, in closed form."""
    from llmkit.estimate.params import count_params  # lazy: the model does not need estimate/ to run

    return count_params(cfg).total
