"""Memory plans for training (full fine-tuning, LoRA, QLoRA) and inference (KV cache).

A training step's peak is weights + gradients + optimizer states +
activations (``activations.py``), with AdamW (two moments per trained parameter):

- ``fp32``: 4 + 4 + 8 = 16 bytes per parameter, fp32 activations;
- ``mixed``: bf16 weights and gradients, fp32 master weights and moments,
  2 + 2 + 12 = 16 bytes per parameter (ZeRO, Rajbhandari et al. 2020, sec. 3.1),
  bf16 activations (norms and the loss still keep fp32 copies);
- ``lora``: frozen bf16 weights (2 bytes per parameter) plus rank-r adapters
  on every attention linear (Hu et al. 2021), trained in mixed precision;
- ``qlora``: as LoRA, but the blocks' linear weights stored as NF4 with double
  quantisation (Dettmers et al. 2023): 4 bits per weight, an 8-bit absmax per
  64 weights and an fp32 constant per 256 absmaxes = 0.516 bytes per weight.
  Embeddings, lm_head, norms, biases and routers stay bf16.

The sum assumes gradients and activations coexist: exactly so with gradient
accumulation (or ``zero_grad(set_to_none=False)``); with a single micro-batch
and ``set_to_none=True`` gradients grow while activations are freed, and the
true peak is lower by up to the gradients' size. Not counted: the CUDA context
(~0.5 GiB), allocator fragmentation, and foreach/fused optimizer temporaries.

KV cache per token: standard attention stores k and v for every layer,
2·L·kv_heads·head_dim values; MLA stores the latent and the shared rope key,
L·(kv_lora_rank + qk_rope_head_dim) values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llmkit.config import ModelConfig
from llmkit.estimate.activations import activation_bytes
from llmkit.estimate.params import count_params, lora_params

Precision = Literal["fp32", "mixed"]

# (weights, grads, optimizer) bytes per trained parameter, and bytes per activation value
_PRECISIONS: dict[str, tuple[int, int, int, int]] = {"fp32": (4, 4, 8, 4), "mixed": (2, 2, 12, 2)}
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes at the peak of one training step, by kind."""

    weights: int  # every weight held in memory, trained or frozen
    grads: int
    optimizer: int  # AdamW moments (and fp32 master weights in mixed precision)
    activations: int  # kept for backward, at their peak
    activations_checkpointed: int  # the same with per-block activation checkpointing

    def total(self, checkpointing: bool = False) -> int:
        acts = self.activations_checkpointed if checkpointing else self.activations
        return self.weights + self.grads + self.optimizer + acts


def full_finetune_memory(cfg: ModelConfig, batch: int, seq: int, precision: Precision = "mixed") -> TrainingMemory:
    """Training every weight with AdamW.

    Args:
        cfg: the model.
        batch: sequences per step.
        seq: tokens per sequence.
        precision: ``"fp32"`` or ``"mixed"`` (bf16 compute, fp32 master weights and moments).
    Returns:
        the step's peak, by kind.
    """
    w, g, o, a = _PRECISIONS[precision]
    n = count_params(cfg).total
    return TrainingMemory(weights=w * n, grads=g * n, optimizer=o * n,
                          activations=activation_bytes(cfg, batch, seq, a),
                          activations_checkpointed=activation_bytes(cfg, batch, seq, a, checkpointing=True))


def lora_memory(cfg: ModelConfig, batch: int, seq: int, rank: int = 8, quantized: bool = False) -> TrainingMemory:
    """LoRA (or with ``quantized``, QLoRA) on every attention linear, in mixed precision.

    Args:
        cfg: the model.
        batch: sequences per step.
        seq: tokens per sequence.
        rank: adapter rank r.
        quantized: store the blocks' linear weights as NF4 with double quantisation (QLoRA).
    Returns:
        the step's peak, by kind.
    """
    w, g, o, a = _PRECISIONS["mixed"]
    counts = count_params(cfg)
    adapters = lora_params(cfg, rank)
    if quantized:
        frozen = NF4_BYTES_PER_WEIGHT * counts.block_linear_weights + 2 * (counts.total - counts.block_linear_weights)
    else:
        frozen = 2 * counts.total
    return TrainingMemory(weights=round(frozen) + w * adapters, grads=g * adapters, optimizer=o * adapters,
                          activations=activation_bytes(cfg, batch, seq, a, lora_rank=rank),
                          activations_checkpointed=activation_bytes(cfg, batch, seq, a, lora_rank=rank,
                                                                    checkpointing=True))


def kv_cache_bytes_per_token(cfg: ModelConfig, dtype_bytes: int = 2) -> int:
    """Bytes the KV cache (MLA: latent cache) grows by per token of context, over all layers."""
    if cfg.attention == "mla":
        return cfg.n_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * dtype_bytes
    return 2 * cfg.n_layers * cfg.kv_heads * cfg.head_size * dtype_bytes
