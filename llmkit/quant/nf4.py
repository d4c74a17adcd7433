"""4-bit NormalFloat (NF4) with double quantisation (QLoRA) and `Linear4bit`, the ``nf4`` scheme.

NF4 (Dettmers et al. 2023, arXiv:2305.14314, section 3 and appendix E) is the
information-theoretically optimal 4-bit code for normally distributed weights:
its 16 values are quantiles of N(0, 1) scaled to [-1, 1], built asymmetrically
so that 0 is exactly representable (8 positive levels, 7 negative, and 0). A
weight is cut into blocks of 64; each block is divided by its absmax, and every
value is replaced by the index of the nearest code value.

Double quantisation (the paper's "DQ") quantises those fp32 absmax constants
again: their mean is subtracted (they are all positive, so this centres them),
then each block of 256 is scaled by its own fp32 absmax and stored as 8-bit
floats. The paper uses 8-bit floats here; we use torch's ``float8_e4m3fn``
(largest finite value 448). That cuts the scale overhead from 32/64 = 0.5 to
8/64 + 32/(64*256) = 0.127 bits per parameter.

Storage: two 4-bit indices per uint8, the even element in the high nibble.
Dequantisation looks up both nibbles of a byte at once in a 256-entry table.

``Linear4bit`` stores a weight this way and dequantises it on the fly (about
0.516 bytes/param). Its backward re-dequantises instead of saving the weight
(``QuantLinear``'s, what bitsandbytes' MatMul4Bit does), so QLoRA training
holds no full-precision copy of a frozen weight beyond the layer being computed.
The compute dtype defaults to the original weight's, because fp32 matmuls are
the fast path on CPU (the paper computes in bf16 on GPU).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.quant.linear import QuantLinear


def nf4_code() -> torch.Tensor:
    """The 16 NF4 values, ascending, from the paper's construction.

    q_i are quantiles of N(0, 1) at probabilities evenly spaced between delta and
    1/2 (and 1/2 and 1 - delta), with delta = (1/30 + 1/32) / 2 so the extreme
    quantiles stay finite; then normalised to [-1, 1].
    """
    delta = 0.5 * (1 / 30 + 1 / 32)
    positive = torch.special.ndtri(torch.linspace(1 - delta, 0.5, 9, dtype=torch.float64)[:-1])  # 8 values
    negative = -torch.special.ndtri(torch.linspace(1 - delta, 0.5, 8, dtype=torch.float64)[:-1])  # 7 values
    code = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return (code / code.max()).float()


NF4_CODE = nf4_code()
_MIDPOINTS = (NF4_CODE[1:] + NF4_CODE[:-1]) / 2  # decision boundaries of nearest-value rounding
_PAIRS = torch.stack([NF4_CODE.repeat_interleave(16), NF4_CODE.repeat(16)], dim=1)  # (256, 2): byte -> (hi, lo)
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max


def _blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Flatten and zero-pad ``x`` to whole blocks: (n_blocks, block_size) float32."""
    flat = x.reshape(-1).float()
    return F.pad(flat, (0, -flat.numel() % block_size)).view(-1, block_size)


def quantize_nf4(x: torch.Tensor, block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise NF4 quantisation.

    Args:
        x: any-shape float tensor.
        block_size: values sharing one absmax; must be even.
    Returns:
        packed (n_blocks * block_size / 2,) uint8 and absmax (n_blocks,) float32.
    """
    if block_size % 2:
        raise ValueError(f"block_size={block_size} must be even (two values per byte)")
    blocks = _blocks(x, block_size)
    absmax = blocks.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny)  # (n_blocks,)
    idx = torch.bucketize(blocks / absmax[:, None], _MIDPOINTS.to(x.device)).to(torch.uint8).view(-1, 2)
    return (idx[:, 0] << 4) | idx[:, 1], absmax


def dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor, numel: int, block_size: int = 64,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_nf4`: (numel,) values in ``dtype``."""
    values = _PAIRS.to(packed.device)[packed.long()].view(-1, block_size)  # (n_blocks, block_size)
    return (values * absmax[:, None]).view(-1)[:numel].to(dtype)


def quantize_absmax(absmax: torch.Tensor, block_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Double quantisation: (absmax - mean) in fp8 blocks of ``block_size`` with an fp32 scale each.

    Returns:
        codes (n,) float8_e4m3fn, scales (ceil(n / block_size),) float32, offset () float32.
    """
    offset = absmax.mean()
    blocks = _blocks(absmax - offset, block_size)
    scale = blocks.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / FP8_MAX
    codes = (blocks / scale[:, None]).to(torch.float8_e4m3fn).view(-1)[: absmax.numel()]
    return codes, scale, offset


def dequantize_absmax(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                      block_size: int = 256) -> torch.Tensor:
    """Inverse of :func:`quantize_absmax`: (n,) float32."""
    n = codes.numel()
    blocks = F.pad(codes.float(), (0, -n % block_size)).view(-1, block_size)
    return (blocks * scale[:, None]).view(-1)[:n] + offset


class Linear4bit(QuantLinear):
    """A frozen linear layer whose weight is stored as NF4 (optionally with double-quantised scales).

    Buffers: ``weight_packed`` (uint8, two indices per byte) and ``absmax`` (float32 per block), or
    with double quantisation ``absmax`` as float8 codes plus ``absmax_scale`` and ``absmax_offset``.
    The bias, if any, stays a float parameter.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 compute_dtype: torch.dtype = torch.float32, block_size: int = 64, double_quant: bool = True,
                 device: torch.device | str | None = None):
        super().__init__(in_features, out_features, bias, compute_dtype, False, device)
        self.block_size, self.double_quant = block_size, double_quant
        n_blocks = math.ceil(in_features * out_features / block_size)
        self.register_buffer("weight_packed", torch.zeros(n_blocks * block_size // 2, dtype=torch.uint8, device=device))
        if double_quant:
            self.register_buffer("absmax", torch.zeros(n_blocks, dtype=torch.float8_e4m3fn, device=device))
            self.register_buffer("absmax_scale", torch.zeros(math.ceil(n_blocks / 256), device=device))
            self.register_buffer("absmax_offset", torch.zeros((), device=device))
        else:
            self.register_buffer("absmax", torch.zeros(n_blocks, device=device))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, compute_dtype: torch.dtype | None = None, block_size: int = 64,
                    double_quant: bool = True) -> "Linear4bit":
        """Quantise ``linear``'s weight (its bias is kept in ``compute_dtype``)."""
        w = linear.weight
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, compute_dtype or w.dtype,
                block_size, double_quant, w.device)
        packed, absmax = quantize_nf4(w, block_size)
        q.weight_packed.copy_(packed)
        if double_quant:
            codes, scale, offset = quantize_absmax(absmax)
            q.absmax.copy_(codes)
            q.absmax_scale.copy_(scale)
            q.absmax_offset.copy_(offset)
        else:
            q.absmax.copy_(absmax)
        q._copy_float(linear, None)
        return q

    def _weight(self) -> torch.Tensor:
        absmax = self.absmax
        if self.double_quant:
            absmax = dequantize_absmax(absmax, self.absmax_scale, self.absmax_offset)
        flat = dequantize_nf4(self.weight_packed, absmax, self.in_features * self.out_features, self.block_size)
        return flat.view(self.out_features, self.in_features)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._weight().to(x.dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block_size={self.block_size}, double_quant={self.double_quant}"
