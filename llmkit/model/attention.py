"""Multi-head attention with grouped K/V heads (MHA, GQA, MQA), optional QK-norm and biases.

``n_kv_heads == n_heads`` is MHA, ``1`` is MQA (Shazeer 2019), anything between
is GQA (Ainslie et al. 2023): each K/V head serves ``n_heads // n_kv_heads``
query heads. The softmax core is shared with MLA and cross-attention through
:func:`attend`, which has two implementations with equal outputs: torch's fused
``scaled_dot_product_attention`` and the explicit eager formula.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.config import ModelConfig
from llmkit.model.metadata import AttentionMetadata
from llmkit.model.norm import RMSNorm
from llmkit.model.paged import paged_attention
from llmkit.model.rope import apply_rope


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
           impl: str = "sdpa", dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v.

    Args:
        q: (B, H, T, Dk) queries.
        k: (B, Hkv, S, Dk) keys; H must be a multiple of Hkv (grouped heads).
        v: (B, Hkv, S, Dv) values.
        mask: bool (B or 1, 1, T, S), True = may attend; None = plain causal with T == S.
        scale: multiplier of the scores, usually Dk ** -0.5.
        impl: "sdpa" (fused) or "eager" (explicit, returns identical values).
        dropout: dropout probability on the attention weights.
    Returns:
        (B, H, T, Dv)
    """
    groups = q.shape[1] // k.shape[1]
    b, h, t, _ = q.shape
    if impl == "sdpa" and t == 1 and groups > 1 and mask is not None:
        # one query per head (decoding): fold each group's query heads into the "time" axis of its
        # K/V head, an exact rewrite that avoids torch's slow CPU path for grouped heads
        q = q.view(b, k.shape[1], groups, q.shape[-1])
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)
        return y.reshape(b, h, 1, v.shape[-1])
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None,
                                              scale=scale, enable_gqa=groups > 1)
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-2, -1)).float() * scale  # (B, H, T, S)
    if mask is None:
        t, s = scores.shape[-2:]
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.dropout(scores.softmax(dim=-1), p=dropout).to(v.dtype)
    return probs @ v


class Attention(nn.Module):
    """Causal self-attention of layer ``layer_idx``; ``kv_cache`` is attached by ``CausalLM.setup_caches``."""

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_size
        self.q_proj = nn.Linear(cfg.dim, self.n_heads * self.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, self.kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, self.kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.dim, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps)
        self.kv_cache = None

    def forward(self, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """x (B, T, dim) -> (B, T, dim): writes K/V at ``meta.input_pos`` when a cache is set up,
        or into ``meta.paged``'s pool (B = 1) in an engine step."""
        b, t, _ = x.shape
        rope = meta.rope
        q, k, v = self.project_qkv(x)
        if rope is not None:
            q = apply_rope(q, *rope, layout=self.cfg.rope_layout)
            k = apply_rope(k, *rope, layout=self.cfg.rope_layout)
        if meta.paged is not None:  # an engine step: one flattened row, K/V in the paged pool
            y = paged_attention(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1),
                                meta.paged.caches[self.layer_idx], meta.paged, self.head_dim ** -0.5)  # (T, H, D)
            return self.o_proj(y.reshape(b, t, -1))
        if self.kv_cache is not None and meta.input_pos is not None:
            if t == 1 and self.kv_cache.decode_kernel is not None and meta.prefix_kv is None:
                # a quantized cache's decode step: the kernel reads the codes in place
                return self.project_out(self.kv_cache.decode(meta.input_pos, q, k, v, meta.mask, self.head_dim ** -0.5))
            k, v = self.kv_cache.update(meta.input_pos, k, v)  # (B, Hkv, S, D)
        if meta.prefix_kv is not None:
            pk, pv = meta.prefix_kv[self.layer_idx].to(k.dtype)  # (Hkv, n, D) each
            k = torch.cat([pk.expand(b, -1, -1, -1), k], dim=2)
            v = torch.cat([pv.expand(b, -1, -1, -1), v], dim=2)
        dropout = self.cfg.attn_dropout if self.training else 0.0
        return self.project_out(attend(q, k, v, meta.mask, self.head_dim ** -0.5, self.cfg.attn_impl, dropout))

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, dim) -> q (B, H, T, D), k and v (B, Hkv, T, D): QK-norm applied, RoPE not yet.

        Also the entry point of attention cores that replace this one's softmax (:mod:`llmkit.longctx.swap`),
        so that they keep its weights, adapters and quantized linears."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def project_out(self, y: torch.Tensor) -> torch.Tensor:
        """Attention output y (B, H, T, Dv) -> (B, T, dim) through ``o_proj``."""
        b, _, t, _ = y.shape
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class CrossAttention(nn.Module):
    """Attention from decoder states to an encoder's output (encoder-decoder models); no causal mask."""

    def __init__(self, cfg: ModelConfig, memory_dim: int | None = None):
        super().__init__()
        self.cfg = cfg
        memory_dim = memory_dim or cfg.dim
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_size
        self.q_proj = nn.Linear(cfg.dim, self.n_heads * self.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(memory_dim, self.kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(memory_dim, self.kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.dim, bias=cfg.o_bias)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, dim), memory (B, S, memory_dim), memory_mask (B, S) of 0/1 -> (B, T, dim)."""
        b, t, _ = x.shape
        s = memory.shape[1]
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(memory).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(memory).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        if memory_mask is None:
            mask = torch.ones(1, 1, t, s, dtype=torch.bool, device=x.device)
        else:
            mask = memory_mask.bool()[:, None, None, :].expand(b, 1, t, s)
        dropout = self.cfg.attn_dropout if self.training else 0.0
        y = attend(q, k, v, mask, self.head_dim ** -0.5, self.cfg.attn_impl, dropout)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))
