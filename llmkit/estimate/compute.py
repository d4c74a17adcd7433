"""Training compute: C ≈ 6·N·D, the Chinchilla-optimal split of a budget, and wall-clock time at an MFU.

- Each token costs ~2·N FLOPs forward and ~4·N backward for N parameters
  (Kaplan et al. 2020, sec. 2.1), so training on D tokens takes C = 6·N·D.
  For MoE, N is the parameters a token is routed through. The attention
  score FLOPs (12·L·T·d per token, Chowdhery et al. 2022 app. B) are left out,
  as in the Chinchilla accounting: for a dense model (~12·d² parameters per
  layer) they add T / (6·d), 2% at d = 4096 and T = 512.
- Hoffmann et al. 2022 (Chinchilla) found the compute-optimal model trains on
  ~20 tokens per parameter; with C = 6·N·D that gives N = sqrt(C / 120), D = 20·N.
- Time = C / (MFU · peak). The default peak, 989 TFLOP/s, is an H100 SXM's dense
  bf16 tensor-core rate (NVIDIA datasheet; 1979 is with 2:4 sparsity, which
  training does not use); 0.4 MFU is what well-tuned dense training reaches
  (PaLM reports 46%, Llama 3 38–43% on H100s).
"""
from __future__ import annotations

import math

TOKENS_PER_PARAM = 20  # Chinchilla-optimal tokens per parameter
H100_BF16_TFLOPS = 989.0  # dense bf16 peak of an H100 SXM
DEFAULT_MFU = 0.4


def train_flops(params: int, tokens: int) -> float:
    """C = 6·N·D: FLOPs to train ``params`` (active) parameters on ``tokens`` tokens."""
    return 6.0 * params * tokens


def chinchilla_tokens(params: int) -> int:
    """Compute-optimal training tokens for a model of ``params`` parameters (20 per parameter)."""
    return TOKENS_PER_PARAM * params


def compute_optimal(flops: float) -> tuple[int, int]:
    """(parameters, tokens) that spend ``flops`` compute-optimally: N = sqrt(C / (6·20)), D = 20·N."""
    n = math.sqrt(flops / (6 * TOKENS_PER_PARAM))
    return round(n), round(TOKENS_PER_PARAM * n)


def train_gpu_hours(flops: float, mfu: float = DEFAULT_MFU, peak_tflops: float = H100_BF16_TFLOPS) -> float:
    """Device-hours to execute ``flops`` at ``mfu`` of a ``peak_tflops`` device (divide by the device count)."""
    return flops / (mfu * peak_tflops * 1e12) / 3600
