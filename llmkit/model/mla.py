"""Multi-head latent attention (DeepSeek-V2, arXiv:2405.04434; V3).

Keys and values are rebuilt from a shared low-rank latent
``c_kv = norm(W_dkv x)`` of width ``kv_lora_rank``; position enters through a
separate, decoupled ``qk_rope_head_dim``-wide key shared by all heads. The cache
stores only ``c_kv`` and the rotated shared key, i.e. (kv_lora_rank +
qk_rope_head_dim) numbers per token and layer. Queries may also be compressed
(``q_lora_rank``). Weight names follow the DeepSeek checkpoints.
"""
from __future__ import annotations

import torch
from torch import nn

from llmkit.config import ModelConfig, yarn_mscale
from llmkit.model.attention import attend
from llmkit.model.metadata import AttentionMetadata
from llmkit.model.norm import RMSNorm
from llmkit.model.paged import gather, segment_mask, segments
from llmkit.model.rope import apply_rope


class MLAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int = 0):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        h = cfg.n_heads
        self.nope, self.rope_dim, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.qk_dim = self.nope + self.rope_dim
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(cfg.dim, h * self.qk_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(cfg.dim, cfg.q_lora_rank, bias=cfg.qkv_bias)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, h * self.qk_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(cfg.dim, cfg.kv_lora_rank + self.rope_dim, bias=cfg.qkv_bias)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, cfg.norm_eps)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, h * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(h * self.v_dim, cfg.dim, bias=cfg.o_bias)
        self.scale = self.qk_dim ** -0.5
        if cfg.rope_scaling == "yarn" and cfg.rope_mscale_all_dim:
            # DeepSeek folds the YaRN temperature of the full head into the softmax scale
            self.scale *= yarn_mscale(cfg.rope_factor, cfg.rope_mscale_all_dim) ** 2
        self.kv_cache = None

    def forward(self, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """x (B, T, dim) -> (B, T, dim): writes the latent at ``meta.input_pos`` when a cache is set up."""
        if meta.prefix_kv is not None:
            raise ValueError("MLA caches a compressed latent; a key/value prefix does not map onto it")
        b, t, _ = x.shape
        rope = meta.rope
        h = self.cfg.n_heads
        q = self.q_proj(x) if self.cfg.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = q.view(b, t, h, self.qk_dim).transpose(1, 2)  # (B, H, T, nope + rope)
        q_nope, q_pe = q.split([self.nope, self.rope_dim], dim=-1)
        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.cfg.kv_lora_rank, self.rope_dim], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv)  # (B, T, R): what the cache keeps
        layout = self.cfg.rope_layout
        q_pe = apply_rope(q_pe, *rope, layout=layout)
        k_pe = apply_rope(k_pe[:, None], *rope, layout=layout)[:, 0]  # (B, T, P), one head shared by all
        q = torch.cat([q_nope, q_pe], dim=-1)
        if meta.paged is not None:  # an engine step (B = 1): the latents go to the paged pool
            return self.o_proj(self._paged(q, c_kv[0], k_pe[0], meta.paged).reshape(b, t, h * self.v_dim))
        if self.kv_cache is not None and meta.input_pos is not None:
            c_kv, k_pe = self.kv_cache.update(meta.input_pos, c_kv, k_pe)
        y = self._attend(q, c_kv, k_pe, meta.mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, h * self.v_dim))

    def _attend(self, q: torch.Tensor, c_kv: torch.Tensor, k_pe: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """q (B, H, T, nope + rope) over latents c_kv (B, S, R) and shared keys k_pe (B, S, P) -> (B, H, T, v)."""
        b, s = c_kv.shape[:2]
        h = self.cfg.n_heads
        kv = self.kv_b_proj(c_kv).view(b, s, h, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)  # (B, H, S, nope), (B, H, S, v)
        k = torch.cat([k_nope, k_pe[:, None].expand(b, h, s, self.rope_dim)], dim=-1)
        dropout = self.cfg.attn_dropout if self.training else 0.0
        return attend(q, k, v, mask, self.scale, self.cfg.attn_impl, dropout)

    def _paged(self, q: torch.Tensor, c_kv: torch.Tensor, k_pe: torch.Tensor, paged) -> torch.Tensor:
        """q (1, H, N, nope + rope), this step's latents c_kv (N, R), k_pe (N, P) -> (N, H, v), sequence by sequence."""
        cache = paged.caches[self.layer_idx]
        cache.write(paged.slot_mapping, c_kv, k_pe)
        out = q.new_empty(q.shape[2], q.shape[1], self.v_dim)
        for i, start, t, ctx in segments(paged):
            table = paged.block_tables[i]
            latent, shared = gather(cache.c_kv, table, ctx)[None], gather(cache.k_pe, table, ctx)[None]
            mask = segment_mask(paged, i, t, ctx, q.device)
            mask = None if mask is None else mask[None, None]
            out[start:start + t] = self._attend(q[:, :, start:start + t], latent, shared, mask)[0].transpose(0, 1)
        return out
