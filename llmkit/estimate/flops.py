"""Model FLOPs per trained token and the machine's measured peak, for model-FLOPs utilisation (MFU).

Training FLOPs per token follow Kaplan et al. (2020) / PaLM (Chowdhery et al.
2022, app. B): ``6 * N_matmul`` for the weight matmuls (forward 2N, backward
4N) plus ``3 * L * T * (d_qk + d_v)`` for the attention scores (``q @ k.T``)
and the weighted sum (``p @ v``): PaLM's ``12 * L * T * d_attn`` (where
``d_qk = d_v = d_attn``) halved, because causal attention needs only the
lower half of each score matrix; MLA's value heads are narrower than its
query/key heads, hence the two widths. ``N_matmul``
(:attr:`~llmkit.estimate.params.ParamCounts.matmul`) counts the weights that
multiply activations: every 2-D weight except the embedding lookup, plus the
output head even when it is tied; MoE counts only the experts a token is
routed to. (:mod:`llmkit.estimate.compute` sizes whole runs with the coarser
``6 * N * D`` of the scaling-law papers.)

The peak is measured, not looked up: the best rate of a large square matmul
in the given dtype on this device, so MFU on a laptop CPU is meaningful.
"""
from __future__ import annotations

import time

import torch

from llmkit.config import ModelConfig
from llmkit.estimate.params import count_params


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per trained token at context ``seq_len``."""
    if cfg.attention == "mla":
        d_qk, d_v = cfg.n_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim), cfg.n_heads * cfg.v_head_dim
    else:
        d_qk = d_v = cfg.n_heads * cfg.head_size
    return 6.0 * count_params(cfg).matmul + 3.0 * cfg.n_layers * seq_len * (d_qk + d_v)


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
