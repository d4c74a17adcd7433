"""Fused CPU kernels for the model's element-wise ops at inference: RMSNorm, SiLU(gate) * up, RoPE.

In eager PyTorch each of these is several kernels, each a pass over memory and
a dispatch: RMSNorm in bf16 widens, squares, averages, adds, takes the root,
multiplies, narrows and multiplies again; RoPE casts cos and sin, negates,
concatenates, multiplies twice and adds, for q and for k. On a 2-core Zen 4
they cost SmolLM2 about 8 ms of a 60-sequence decode step and ~0.3 s of a
2,048-token prefill step (bf16). ``fused.cpp`` does each in one pass, rounding
where eager rounds, so the results are eager's: bit for bit for RoPE and the
products, up to the fp32 sum's order for RMSNorm and the last bits of exp for
SiLU.

The model's modules call :func:`applies` and take the kernel when it holds: a
CPU fp32/bf16 tensor with grad mode off, outside ``torch.compile``
(inductor fuses these ops itself). Training, other devices and dtypes keep the
eager formulas. The library is built on first use like the other kernels
(:mod:`llmkit.native`); without a compiler everything stays eager.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from llmkit import native

SOURCE = Path(__file__).with_name("fused.cpp")


@functools.cache
def load() -> bool:
    """Build (once per machine) and load the kernels; False, with a warning, if that fails."""
    if not native.build("llmkit_fused", [SOURCE], ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"],
                        "the fused CPU element-wise kernels", "keeping torch's eager ops"):
        return False
    torch.library.register_fake("llmkit::rms_norm")(lambda x, weight, eps: torch.empty_like(x))
    torch.library.register_fake("llmkit::silu_mul")(lambda gate, up: torch.empty_like(gate))
    torch.library.register_fake("llmkit::rope")(
        lambda x, cos, sin, interleaved: x.new_empty(x.shape[0], x.shape[2], x.shape[1], x.shape[3]).transpose(1, 2))
    return True


def applies(*tensors: torch.Tensor) -> bool:
    """Whether the fused kernels take these tensors: inference (grad mode off: ``torch.no_grad`` or
    ``torch.inference_mode``), on the CPU, all fp32 or all bf16, not inside ``torch.compile``, and the library
    built. Grad mode, not ``requires_grad``, decides, so one forward takes one path for every module."""
    if torch.is_grad_enabled():
        return False
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.bfloat16):
        return False
    for t in tensors:
        if t.dtype != dtype or t.device.type != "cpu":
            return False
    return not torch.compiler.is_compiling() and load()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x * rsqrt(mean(x^2) + eps))`` over the last axis, in fp32, rounded as eager rounds.
    x (..., dim) and weight (dim,) contiguous, of one dtype."""
    return torch.ops.llmkit.rms_norm(x, weight, eps)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` (SwiGLU's product): gate and up contiguous, of one shape and dtype."""
    return torch.ops.llmkit.silu_mul(gate, up)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate the first R dims of x (B, H, T, D) (each head's dims contiguous) by cos/sin (B, T, R) float32;
    "half" layout pairs dim i with i + R/2, ``interleaved`` pairs 2i with 2i + 1. Returns (B, H, T, D),
    stored as (B, T, H, D)."""
    return torch.ops.llmkit.rope(x, cos, sin, interleaved)
