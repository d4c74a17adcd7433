"""Mixed precision: autocast contexts and the fp16 loss scaler.

Parameters, gradients and optimizer moments stay fp32 (the master weights);
``bf16`` and ``fp16`` only change the dtype matmuls and attention run in,
through ``torch.autocast``. bf16 has fp32's exponent range, so gradients
need no scaling and it works on CPU and CUDA alike. fp16 underflows small
gradients, so it multiplies the loss by a dynamic scale (``GradScaler``)
before backward and unscales before clipping; that machinery is CUDA-only
here. For ``fp32`` and ``bf16`` the scaler is built disabled, where every
call is a pass-through, so the training step has one code path.
"""
from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(device: torch.device, dtype: str) -> None:
    """Raise ``ValueError`` for a dtype this device cannot train in."""
    if dtype == "fp16" and device.type != "cuda":
        raise ValueError(f"dtype=fp16 needs CUDA (its loss scaler is CUDA-only); use bf16 on {device.type}")


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """The forward-pass context for ``dtype`` (``fp32``: no autocast)."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def grad_scaler(device: torch.device, dtype: str) -> torch.amp.GradScaler:
    """A dynamic loss scaler, enabled only for fp16."""
    return torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
