"""Model FLOPs per token and the machine's measured peak, for model-FLOPs utilisation (MFU).

Training FLOPs per token follow Kaplan et al. (2020) / PaLM (Chowdhery et al.
2022, app. B): ``6 * N_matmul`` for the weight matmuls (forward 2N, backward
4N) plus ``6 * L * T * d_attn`` for the attention scores and weighted sum
(causal attention does half of it, which we do not discount, as PaLM).
``N_matmul`` counts the weights that multiply activations: every 2-D weight
except the embedding lookup, plus the output head even when it is tied.
MoE counts only the experts a token is routed to.

The peak is measured, not looked up: the best rate of a large square matmul
in the given dtype on this device, so MFU on a laptop CPU is meaningful.
"""
from __future__ import annotations

import time

import torch

from llmkit.config import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    """Weights a token multiplies by (routed experts counted k of E times)."""
    from llmkit.model import CausalLM

    with torch.device("meta"):
        model = CausalLM(cfg)
    total = cfg.vocab_size * cfg.dim  # the output head, tied or not
    for name, p in model.named_parameters():
        if p.dim() != 2 or "embed" in name or name == "lm_head.weight":
            continue
        if ".mlp.experts." in name:
            total += p.numel() * cfg.n_experts_per_tok // cfg.n_experts
        else:
            total += p.numel()
    return total


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per trained token at context ``seq_len``."""
    d_attn = cfg.n_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim if cfg.attention == "mla" else cfg.head_size)
    return 6.0 * matmul_params(cfg) + 6.0 * cfg.n_layers * seq_len * d_attn


def measure_peak_flops(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048,
                       seconds: float = 1.0) -> float:
    """Best observed FLOP/s of an ``n x n`` matmul over about ``seconds``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    a @ b  # warm up
    while time.perf_counter() < deadline:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
    return best
