"""Feed-forward block: ``down(act(gate(x)) * up(x))`` when gated (GLU family), else ``down(act(up(x)))``.

With ``activation="silu"`` the gated form is SwiGLU (Shazeer 2020), with
``gelu`` GeGLU, with ``sigmoid`` the original GLU. Weight names follow HF LLaMA.
"""
from __future__ import annotations

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.model import fused
from llmkit.model.activation import get_activation


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, hidden: int | None = None):
        super().__init__()
        hidden = hidden or cfg.ffn_dim
        self.gated = cfg.gated_mlp
        self.act = get_activation(cfg.activation)
        self.silu = cfg.activation == "silu"
        if self.gated:
            self.gate_proj = nn.Linear(cfg.dim, hidden, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.dim, hidden, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(hidden, cfg.dim, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim) -> (..., dim)
        if self.gated:
            gate, up = self.gate_proj(x), self.up_proj(x)
            if self.silu and gate.is_contiguous() and up.is_contiguous() and fused.applies(gate, up):
                return self.down_proj(fused.silu_mul(gate, up))  # SwiGLU in one pass at inference on the CPU
            return self.down_proj(self.act(gate) * up)
        return self.down_proj(self.act(self.up_proj(x)))
