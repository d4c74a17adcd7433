"""`CausalLM`: the decoder-only language model every other part of llmkit trains, adapts and serves.

Layout and parameter names are Hugging Face's (``model.embed_tokens``,
``model.layers.N.self_attn.q_proj``, ``model.norm``, ``lm_head``), so an HF
LLaMA-family state dict loads without renaming. Attention metadata (cache
slots, positions, mask) is computed once per forward here and handed to every
block as arguments; nothing is global.

Two calling modes:
- training / scoring: ``model(input_ids)`` runs causally over the whole sequence;
- cached decoding (gpt-fast style): ``model.setup_caches(B, S)`` once, then
  ``model(ids, input_pos=slots)`` appends to and attends over the static cache.
"""
from __future__ import annotations

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.model.block import Block
from llmkit.model.kv_cache import KVCache, LatentCache
from llmkit.model.moe import Router
from llmkit.model.norm import build_norm
from llmkit.model.rope import RotaryEmbedding, sinusoidal_embedding


class Decoder(nn.Module):
    """Embeddings, the block stack and the final norm (HF's ``model.`` prefix)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        if cfg.pos_embedding == "learned":
            self.embed_positions = nn.Embedding(cfg.max_seq_len, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        # post-LN blocks already end in a norm
        self.norm = build_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.norm_bias) if cfg.norm_placement != "post" else nn.Identity()
        self.rotary_emb = RotaryEmbedding(cfg) if cfg.pos_embedding == "rope" else None


class CausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.cache_len = 0
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

    # ----- caches -----
    def setup_caches(self, max_batch_size: int, max_seq_len: int, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> None:
        """Allocate a static KV cache (or MLA latent cache) for every layer."""
        cfg = self.cfg
        if max_seq_len > cfg.max_seq_len and cfg.pos_embedding == "learned":
            raise ValueError(f"max_seq_len={max_seq_len} exceeds the learned position table ({cfg.max_seq_len})")
        ref = self.lm_head.weight
        dtype = dtype or ref.dtype
        device = device or ref.device
        for layer in self.model.layers:
            if cfg.attention == "mla":
                cache = LatentCache(max_batch_size, max_seq_len, cfg.kv_lora_rank, cfg.qk_rope_head_dim, dtype, device)
            else:
                cache = KVCache(max_batch_size, cfg.kv_heads, max_seq_len, cfg.head_size, cfg.head_size, dtype, device)
            layer.self_attn.kv_cache = cache
        self.cache_len = max_seq_len

    def clear_caches(self) -> None:
        for layer in self.model.layers:
            layer.self_attn.kv_cache = None
        self.cache_len = 0

    # ----- forward -----
    def forward(self, input_ids: torch.Tensor, input_pos: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                return_aux_loss: bool = False, logits_to_keep: int = 0):
        """Next-token logits.

        Args:
            input_ids: (B, T) token ids.
            input_pos: (T,) cache slots of these tokens; requires ``setup_caches``. None = no cache.
            attention_mask: (B, L) 0/1, 0 marking (left) padding. Without a cache L = T; with one,
                L covers the slots written so far (shorter is padded with ones).
            position_ids: (B, T) positions for RoPE/learned embeddings; by default the slot index,
                or the count of real tokens before each one when ``attention_mask`` is given.
            return_aux_loss: also return the MoE load-balancing loss (mean over MoE layers, 0 if dense).
            logits_to_keep: compute logits for only the last this-many positions (0 = all); a prefill
                that only samples the next token skips a (B, T, vocab) matmul.
        Returns:
            logits (B, T or logits_to_keep, vocab) in the model dtype, or ``(logits, aux_loss)``.
        """
        cfg = self.cfg
        b, t = input_ids.shape
        device = input_ids.device
        cached = input_pos is not None
        if cached and not self.cache_len:
            raise RuntimeError("input_pos given but no cache: call model.setup_caches(batch, seq_len) first")
        slots = input_pos if cached else torch.arange(t, device=device)
        kv_len = self.cache_len if cached else t
        if attention_mask is not None:
            attention_mask = _pad_mask(attention_mask.to(device), kv_len)
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, slots]
            else:
                position_ids = slots[None].expand(b, t)
        mask = build_mask(slots, kv_len, attention_mask, cfg.sliding_window, need=cached or cfg.attn_impl == "eager")

        x = self.model.embed_tokens(input_ids)
        rope = None
        if cfg.pos_embedding == "rope":
            rope = self.model.rotary_emb(position_ids)
        elif cfg.pos_embedding == "learned":
            x = x + self.model.embed_positions(position_ids)
        elif cfg.pos_embedding == "sinusoidal":
            x = x + sinusoidal_embedding(position_ids, cfg.dim).to(x.dtype)

        aux_losses = []
        for layer in self.model.layers:
            x, aux = layer(x, rope, mask, input_pos)
            if aux is not None:
                aux_losses.append(aux)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(self.model.norm(x))
        if return_aux_loss:
            aux = torch.stack(aux_losses).mean() if aux_losses else logits.new_zeros(())
            return logits, aux
        return logits

    # ----- bookkeeping -----
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
    def from_pretrained(cls, path, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "CausalLM":
        """Load an HF model directory or a ``.gguf`` file (see ``llmkit.io``)."""
        from llmkit.io.load import load_model

        return load_model(path, dtype=dtype, device=device)

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


def build_mask(slots: torch.Tensor, kv_len: int, attention_mask: torch.Tensor | None,
               sliding_window: int | None, need: bool = False) -> torch.Tensor | None:
    """Boolean attention mask (B or 1, 1, T, kv_len), True = may attend.

    Query at slot p sees key slot j when j <= p, p - j < sliding_window, and j is not
    padding. Each query always sees itself, so padded rows never softmax over nothing.
    Returns None (plain causal, the fused fast path) when nothing beyond causality applies.
    """
    if attention_mask is None and sliding_window is None and not need:
        return None
    keys = torch.arange(kv_len, device=slots.device)
    q = slots[:, None]
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
