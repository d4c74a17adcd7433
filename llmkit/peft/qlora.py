"""QLoRA's frozen base: an NF4-quantised model (``Linear4bit`` lives in :mod:`llmkit.quant.nf4`).

QLoRA (Dettmers et al. 2023, arXiv:2305.14314) = a frozen NF4 base + LoRA on
top + paged optimizers. The first is the ``nf4`` scheme of :mod:`llmkit.quant`;
``quantize_model_4bit`` applies it to a model that may already carry adapters,
and ``apply_lora`` then wraps the quantised linears exactly as it wraps float
ones (``base_layer`` convention; LoRA needs only ``dequantize()`` of a base), so
LoRA, DoRA and ``disable_adapters`` need no QLoRA-specific code.

Paged optimizers (the paper's third part) page optimizer state between GPU and
CPU memory through CUDA unified memory to survive memory spikes. They are
CUDA-only (bitsandbytes ``PagedAdamW``) and not implemented here; on CPU the
optimizer state already lives in host memory.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from llmkit.peft.base import inside_adapter
from llmkit.quant import quantize
from llmkit.quant.nf4 import Linear4bit

__all__ = ["Linear4bit", "quantize_model_4bit"]


def quantize_model_4bit(model: nn.Module, compute_dtype: torch.dtype | None = None, block_size: int = 64,
                        double_quant: bool = True, skip: Sequence[str] = ("lm_head",)) -> nn.Module:
    """Swap every ``nn.Linear`` in ``model`` for a :class:`Linear4bit`, in place.

    Adapters' own layers (``lora_A``, bottleneck projections ...) are left alone, but the
    ``base_layer`` of a LoRA wrapper is quantised, so ``apply_lora(init="pissa")`` followed by
    this function quantises PiSSA's residual (as the PiSSA paper recommends).

    Args:
        model: any module tree.
        compute_dtype: dtype of the on-the-fly dequantised weight; None = each linear's own dtype.
        block_size: NF4 block (64 in the paper).
        double_quant: quantise the per-block scales too (0.127 instead of 0.5 bits/param of overhead).
        skip: leaf names kept in full precision (the output head by default).
    Returns:
        ``model``.
    """
    dtype_name = str(compute_dtype).removeprefix("torch.") if compute_dtype is not None else None
    return quantize(model, "nf4", skip=skip, exclude=inside_adapter(model), compute_dtype=dtype_name,
                    block_size=block_size, double_quant=double_quant)
