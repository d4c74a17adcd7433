"""One decoder block: attention and feed-forward sub-layers with residuals, norm placement by config.

- ``pre`` (GPT-2/LLaMA): x + f(norm(x)); stable at depth, needs a final norm.
- ``post`` (original Transformer): norm(x + f(x)); with ``deepnorm`` the residual
  is up-weighted, norm(alpha * x + f(x)), and f's weights are initialised with
  gain beta (DeepNet, Wang et al. 2022), which makes post-LN trainable at depth.
- ``sandwich`` (Gemma 2 style): x + norm_out(f(norm_in(x))).

Names follow HF: ``input_layernorm``/``post_attention_layernorm`` for the two
norms, plus ``pre_feedforward_layernorm``/``post_feedforward_layernorm`` for
the sandwich's extra pair.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.config import ModelConfig
from llmkit.model.attention import Attention, CrossAttention
from llmkit.model.metadata import AttentionMetadata
from llmkit.model.mla import MLAttention
from llmkit.model.mlp import MLP
from llmkit.model.moe import MoE
from llmkit.model.norm import build_norm

ATTENTION = {"mha": Attention, "mla": MLAttention}  # built as (cfg, layer index)
FEED_FORWARD = {"dense": MLP, "moe": MoE}  # built as (cfg); "moe" also returns its load-balancing loss


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg = cfg

        def norm() -> nn.Module:
            return build_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.norm_bias)

        self.input_layernorm = norm()
        self.self_attn = ATTENTION[cfg.attention](cfg, layer)
        self.post_attention_layernorm = norm()
        if cfg.norm_placement == "sandwich":
            self.pre_feedforward_layernorm = norm()
            self.post_feedforward_layernorm = norm()
        self.moe = cfg.is_moe_layer(layer)
        self.mlp = FEED_FORWARD["moe" if self.moe else "dense"](cfg)

    def _ffn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.mlp(x) if self.moe else (self.mlp(x), None)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, dim) -> (x (B, T, dim), MoE aux loss or None); ``meta`` goes to attention unchanged."""
        drop = self.cfg.resid_dropout if self.training else 0.0
        placement = self.cfg.norm_placement
        if placement == "pre":
            x = x + F.dropout(self.self_attn(self.input_layernorm(x), meta), drop)
            y, aux = self._ffn(self.post_attention_layernorm(x))
            return x + F.dropout(y, drop), aux
        if placement == "post":
            alpha = self.cfg.deepnorm_alpha
            x = self.input_layernorm(alpha * x + F.dropout(self.self_attn(x, meta), drop))
            y, aux = self._ffn(x)
            return self.post_attention_layernorm(alpha * x + F.dropout(y, drop)), aux
        h = self.self_attn(self.input_layernorm(x), meta)
        x = x + F.dropout(self.post_attention_layernorm(h), drop)
        y, aux = self._ffn(self.pre_feedforward_layernorm(x))
        return x + F.dropout(self.post_feedforward_layernorm(y), drop), aux


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention sub-layer for encoder-decoder use: x + cross_attn(norm(x), memory)."""

    def __init__(self, cfg: ModelConfig, memory_dim: int | None = None):
        super().__init__()
        self.norm = build_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.norm_bias)
        self.cross_attn = CrossAttention(cfg, memory_dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.cross_attn(self.norm(x), memory, memory_mask)
