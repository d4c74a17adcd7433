"""Back-of-the-envelope sizing of a model config: parameters, training compute and time, memory.

``estimate(cfg)`` answers the questions asked before a run: how many
parameters (and, for MoE, how many per token), how many FLOPs and device-hours
to train on D tokens (Chinchilla-optimal by default), how much memory a
training step needs for full fine-tuning (fp32 or mixed precision), LoRA and
QLoRA, with and without activation checkpointing, and how large the KV cache
grows per token. Everything is closed form over the config, so a 100B+
config costs microseconds; the activation count was checked tensor by tensor
against a live-tensor measurement of our modules (``measure.py``).

Parts: ``params.py`` (counts: llmkit's one parameter counter), ``compute.py``
(6ND, Chinchilla, time), ``flops.py`` (FLOPs per token and the measured peak,
for MFU), ``activations.py`` (what backward keeps), ``memory.py`` (training
plans, KV cache), ``measure.py`` (peak live tensor bytes on any device).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from llmkit.config import ModelConfig
from llmkit.estimate.compute import (DEFAULT_MFU, H100_BF16_TFLOPS, chinchilla_tokens, compute_optimal, train_flops,
                                     train_gpu_hours)
from llmkit.estimate.memory import TrainingMemory, full_finetune_memory, kv_cache_bytes_per_token, lora_memory
from llmkit.estimate.params import count_params, lora_params

GiB = 2**30

__all__ = ["Estimate", "TrainingMemory", "estimate", "full_finetune_memory", "lora_memory", "kv_cache_bytes_per_token",
           "count_params", "GiB"]


@dataclass(frozen=True)
class Estimate:
    """Sizes, compute and memory of one config; ``to_dict()`` is the JSON form (memory in GiB)."""

    params: int  # total parameters
    active_params: int  # parameters used per token (MoE: k of E routed experts)
    lora_params: int  # trainable parameters of the LoRA plan
    tokens: int  # training tokens D behind train_flops
    chinchilla_tokens: int  # 20 tokens per parameter
    train_flops: float  # 6 * active_params * tokens
    train_gpu_hours: float  # at mfu of peak_tflops, on one device
    mfu: float
    peak_tflops: float
    optimal_params: int | None  # compute-optimal size for the --flops budget, if one was given
    optimal_tokens: int | None
    batch: int  # memory plans are for this many sequences ...
    seq: int  # ... of this many tokens
    lora_rank: int
    kv_cache_bytes_per_token: int  # bf16 unless asked otherwise
    memory: dict[str, TrainingMemory]  # plans: "full" (mixed precision), "full_fp32", "lora", "qlora"

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict: every field but ``memory``, plus ``memory_<plan>_gb`` and ``memory_<plan>_ckpt_gb``."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "memory"}
        for name, mem in self.memory.items():
            out[f"memory_{name}_gb"] = round(mem.total() / GiB, 3)
            out[f"memory_{name}_ckpt_gb"] = round(mem.total(checkpointing=True) / GiB, 3)
        out["memory_breakdown_gb"] = {name: {k: round(v / GiB, 3) for k, v in asdict(mem).items()}
                                      for name, mem in self.memory.items()}
        return out


def estimate(cfg: ModelConfig, tokens: int | None = None, batch: int = 1, seq: int = 512,
             flops: float | None = None, mfu: float = DEFAULT_MFU, peak_tflops: float = H100_BF16_TFLOPS,
             lora_rank: int = 8, kv_dtype_bytes: int = 2) -> Estimate:
    """Estimate parameters, training compute and time, and memory plans for ``cfg``.

    Args:
        cfg: the model.
        tokens: training tokens D; None = Chinchilla-optimal (20 per parameter).
        batch: sequences per training step, for the memory plans.
        seq: tokens per sequence, for the memory plans.
        flops: a compute budget; when given, also report the compute-optimal size and tokens for it.
        mfu: model FLOPs utilisation assumed for the training time.
        peak_tflops: the device's peak TFLOP/s (default: H100 SXM dense bf16).
        lora_rank: rank of the LoRA/QLoRA adapters on every attention linear.
        kv_dtype_bytes: bytes per cached value (2 = bf16).
    Returns:
        an :class:`Estimate`.
    """
    if batch < 1 or seq < 1 or lora_rank < 1 or (tokens is not None and tokens < 0):
        raise ValueError(f"batch, seq and lora_rank must be >= 1 and tokens >= 0 "
                         f"(got batch={batch}, seq={seq}, lora_rank={lora_rank}, tokens={tokens})")
    if not 0 < mfu <= 1 or peak_tflops <= 0 or (flops is not None and flops <= 0):
        raise ValueError(f"need 0 < mfu <= 1, peak_tflops > 0 and flops > 0 (got mfu={mfu}, "
                         f"peak_tflops={peak_tflops}, flops={flops})")
    cfg = cfg.validate()
    counts = count_params(cfg)
    chinchilla = chinchilla_tokens(counts.total)
    tokens = chinchilla if tokens is None else tokens
    c = train_flops(counts.active, tokens)
    optimal = compute_optimal(flops) if flops is not None else (None, None)
    memory = {
        "full": full_finetune_memory(cfg, batch, seq, "mixed"),
        "full_fp32": full_finetune_memory(cfg, batch, seq, "fp32"),
        "lora": lora_memory(cfg, batch, seq, lora_rank),
        "qlora": lora_memory(cfg, batch, seq, lora_rank, quantized=True),
    }
    return Estimate(params=counts.total, active_params=counts.active, lora_params=lora_params(cfg, lora_rank),
                    tokens=tokens, chinchilla_tokens=chinchilla, train_flops=c,
                    train_gpu_hours=train_gpu_hours(c, mfu, peak_tflops), mfu=mfu, peak_tflops=peak_tflops,
                    optimal_params=optimal[0], optimal_tokens=optimal[1], batch=batch, seq=seq, lora_rank=lora_rank,
                    kv_cache_bytes_per_token=kv_cache_bytes_per_token(cfg, kv_dtype_bytes), memory=memory)
