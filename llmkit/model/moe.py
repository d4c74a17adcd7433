"""Sparse mixture-of-experts feed-forward (Shazeer 2017; Switch, Mixtral, DeepSeekMoE).

A router scores every expert per token, the top-k experts run on that token
and their outputs are summed with the router weights. Variants, by config:
softmax (Mixtral, DeepSeek-V2) or sigmoid (DeepSeek-V3) scores; plain top-k,
DeepSeek-V2's group-limited top-k, or DeepSeek-V3's bias-corrected
("auxiliary-loss-free") group top-k; renormalised weights; always-on shared
experts. Training gets the Switch-Transformer load-balancing loss
``E * sum_e f_e * P_e`` (f_e: fraction of token-slots sent to expert e,
P_e: mean router probability of e).

Experts are a ModuleList of ordinary MLPs (checkpoint names
``experts.N.gate_proj``): each expert runs once on the tokens routed to it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.config import ModelConfig
from llmkit.model.mlp import MLP


class Router(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_experts, cfg.dim))
        if cfg.topk_method == "noaux_tc":
            # DeepSeek-V3: a per-expert bias, tuned outside the gradient, that only affects which experts are chosen
            self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, dim) -> (weights (N, k), expert ids (N, k), probs (N, E) for the aux loss)."""
        cfg = self.cfg
        logits = F.linear(x.float(), self.weight.float())
        scores = logits.softmax(-1) if cfg.router_score == "softmax" else logits.sigmoid()
        choice = scores
        if cfg.topk_method == "noaux_tc":
            choice = scores + self.e_score_correction_bias.float()
        if cfg.topk_method != "greedy":
            grouped = choice.view(-1, cfg.n_group, cfg.n_experts // cfg.n_group)
            if cfg.topk_method == "noaux_tc":
                group_score = grouped.topk(2, dim=-1).values.sum(-1)
            else:
                group_score = grouped.max(dim=-1).values
            keep = torch.zeros_like(group_score).scatter_(1, group_score.topk(cfg.topk_group, dim=-1).indices, 1.0)
            fill = float("-inf") if cfg.topk_method == "noaux_tc" else 0.0
            choice = grouped.masked_fill(keep[..., None] == 0, fill).view(-1, cfg.n_experts)
        ids = choice.topk(cfg.n_experts_per_tok, dim=-1).indices
        weights = scores.gather(1, ids)
        if cfg.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        weights = weights * cfg.routed_scaling_factor
        probs = scores if cfg.router_score == "softmax" else scores / scores.sum(-1, keepdim=True)
        return weights, ids, probs


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = Router(cfg)
        self.experts = nn.ModuleList(MLP(cfg, cfg.expert_dim) for _ in range(cfg.n_experts))
        if cfg.n_shared_experts:
            self.shared_experts = MLP(cfg, cfg.expert_dim * cfg.n_shared_experts)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, dim) -> (output (B, T, dim), load-balancing loss (scalar))."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, dim)
        weights, ids, probs = self.gate(flat)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(ids == e)
            if token.numel():
                y = expert(flat[token]) * weights[token, slot, None].to(flat.dtype)
                out.index_add_(0, token, y)
        if self.cfg.n_shared_experts:
            out = out + self.shared_experts(flat)
        return out.view(shape), load_balancing_loss(probs, ids, self.cfg.n_experts)


def load_balancing_loss(probs: torch.Tensor, ids: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch-Transformer auxiliary loss E * sum_e f_e P_e.

    Args:
        probs: (N, E) router probabilities.
        ids: (N, k) chosen experts.
    Returns:
        scalar; equals k when routing is perfectly uniform.
    """
    counts = torch.zeros(n_experts, device=ids.device).index_add_(0, ids.flatten(), torch.ones(ids.numel(), device=ids.device))
    f = counts / ids.shape[0]  # (E,) token-slots per token sent to each expert
    return n_experts * (f * probs.mean(0)).sum()
