"""llama.cpp's block layouts (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) and their pure-torch dequantisers.

A GGUF tensor of one of these types is a run of fixed-size blocks along each
row (the input features): every block holds ``block_size`` weights in
``type_size`` bytes, so a row of ``K`` weights is ``K / block_size * type_size``
bytes and a matrix is a ``(out_features, row_bytes)`` uint8 array. Keeping
rows whole is what lets rows be permuted (llama.cpp's q/k order) and gathered
(embedding lookups) without touching the blocks. The layouts, as in ggml's
``ggml-common.h`` (``d``/``dmin``/``m`` are fp16):

======  =====  =====  ======================================================================
type    block  bytes  layout and value
======  =====  =====  ======================================================================
Q8_0    32     34     d, int8 q[32];                         w = d * q
Q4_0    32     18     d, u8 qs[16];  q[j] = qs[j] & 15, q[j+16] = qs[j] >> 4;  w = d * (q - 8)
Q4_1    32     20     d, m, u8 qs[16];  nibbles as Q4_0;     w = d * q + m
Q4_K    256    144    d, dmin, 12 bytes of 6-bit (scale, min) pairs for 8 sub-blocks of 32,
                      u8 qs[128] (32 bytes per pair of sub-blocks: low nibbles the first,
                      high the second);                      w = d * sc * q - dmin * mn
Q6_K    256    210    u8 ql[128] (low 4 bits), u8 qh[64] (high 2 bits), int8 scales[16]
                      (one per 16 weights), d;               w = d * scale * (q - 32)
======  =====  =====  ======================================================================

The functions here are the reference (and the fallback where the C++ kernel
is not built, or the tensor is not on the CPU); they are tested against the
``gguf`` package's numpy dequantisers. Quantising to Q8_0/Q4_0/Q4_1 uses the
``gguf`` package's bit-exact port of ggml's quantisers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class GGUFType:
    """One block layout: its ggml type id (the value GGUF files store), block size and bytes per block."""

    name: str
    ggml_type: int  # ggml's enum value, also what the C++ op takes
    block_size: int  # weights per block
    type_size: int  # bytes per block
    can_quantize: bool  # the gguf package can quantise floats to it (the K-quants it cannot)

    def row_bytes(self, in_features: int) -> int:
        """Bytes of one row of ``in_features`` weights; ValueError if the row is not whole blocks."""
        if in_features % self.block_size:
            raise ValueError(f"{self.name}: a row of {in_features} weights is not a whole number of "
                             f"{self.block_size}-weight blocks")
        return in_features // self.block_size * self.type_size


GGUF_TYPES: dict[str, GGUFType] = {t.name: t for t in (
    GGUFType("q8_0", 8, 32, 34, True),
    GGUFType("q4_0", 2, 32, 18, True),
    GGUFType("q4_1", 3, 32, 20, True),
    GGUFType("q4_k", 12, 256, 144, False),
    GGUFType("q6_k", 14, 256, 210, False),
)}
_BY_ID = {t.ggml_type: t for t in GGUF_TYPES.values()}


def gguf_type(name_or_id: str | int) -> GGUFType:
    """The layout for a name (``"q4_1"``, case-insensitive) or a ggml type id; ValueError naming the choices."""
    found = _BY_ID.get(name_or_id) if isinstance(name_or_id, int) else GGUF_TYPES.get(str(name_or_id).lower())
    if found is None:
        raise ValueError(f"GGUF type {name_or_id!r} has no native kernel; native types: {', '.join(GGUF_TYPES)}")
    return found


def _f16(b: torch.Tensor) -> torch.Tensor:
    """(..., 2) little-endian fp16 bytes -> (..., 1) float32."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(..., n) bytes -> (..., 2n): all low nibbles, then all high nibbles (ggml's order within a block)."""
    return torch.cat([qs & 15, qs >> 4], dim=-1)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b[..., :2]) * b[..., 2:].contiguous().view(torch.int8).float()


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b[..., :2]) * (_nibbles(b[..., 2:]).float() - 8)


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    return _f16(b[..., :2]) * _nibbles(b[..., 4:]).float() + _f16(b[..., 2:4])


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])  # (..., 1)
    s = b[..., 4:16].reshape(*b.shape[:-1], 3, 4)
    lo, hi, mixed = s[..., 0, :], s[..., 1, :], s[..., 2, :]
    # sub-blocks 0-3 keep their 6 bits in bytes 0-7; 4-7 split theirs between bytes 8-11 and the top bits of 0-7
    scale = torch.cat([lo & 63, (mixed & 15) | ((lo >> 2) & 48)], dim=-1).float()  # (..., 8)
    mins = torch.cat([hi & 63, (mixed >> 4) | ((hi >> 2) & 48)], dim=-1).float()
    qs = b[..., 16:].reshape(*b.shape[:-1], 4, 1, 32)
    q = torch.cat([qs & 15, qs >> 4], dim=-2).reshape(*b.shape[:-1], 8, 32).float()
    return (d[..., None] * scale[..., None] * q - dmin[..., None] * mins[..., None]).flatten(-2)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    lead = b.shape[:-1]
    ql = b[..., :128].reshape(*lead, 2, 1, 64)
    qh = b[..., 128:192].reshape(*lead, 2, 1, 32)
    scales = b[..., 192:208].contiguous().view(torch.int8).float()  # (..., 16)
    d = _f16(b[..., 208:210])
    low = torch.cat([ql & 15, ql >> 4], dim=-2).reshape(*lead, 8, 32)  # half, nibble, 64 -> 8 rows of 32
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=b.device).view(4, 1)
    high = ((qh >> shifts) & 3).reshape(*lead, 8, 32)
    q = (low | (high << 4)).float() - 32
    return ((d * scales)[..., None] * q.reshape(*lead, 16, 16)).flatten(-2)


_DEQUANTIZE = {"q8_0": _q8_0, "q4_0": _q4_0, "q4_1": _q4_1, "q4_k": _q4_k, "q6_k": _q6_k}


def dequantize_blocks(weight: torch.Tensor, qtype: str | int, in_features: int) -> torch.Tensor:
    """Pure-torch dequantisation of block rows.

    Args:
        weight: (..., row_bytes) uint8, whole rows of ``qtype`` blocks.
        qtype: layout name or ggml type id.
        in_features: weights per row.
    Returns:
        (..., in_features) float32.
    """
    t = gguf_type(qtype)
    if weight.dtype != torch.uint8 or weight.shape[-1] != t.row_bytes(in_features):
        raise ValueError(f"{t.name}: expected uint8 rows of {t.row_bytes(in_features)} bytes for {in_features} "
                         f"weights, got {weight.dtype} rows of {weight.shape[-1]}")
    blocks = weight.reshape(*weight.shape[:-1], in_features // t.block_size, t.type_size)
    return _DEQUANTIZE[t.name](blocks).reshape(*weight.shape[:-1], in_features)


def quantize_blocks(weight: torch.Tensor, qtype: str | int) -> torch.Tensor:
    """Quantise float rows to ``qtype`` blocks with ggml's rounding (the ``gguf`` package's port).

    Args:
        weight: (..., in_features) float; ``in_features`` a multiple of the block size.
        qtype: a layout the ``gguf`` package quantises to (q8_0, q4_0, q4_1).
    Returns:
        (..., row_bytes) uint8 on ``weight``'s device.
    """
    from gguf import GGMLQuantizationType, quantize

    t = gguf_type(qtype)
    if not t.can_quantize:
        raise ValueError(f"cannot quantise to {t.name} (a K-quant needs llama.cpp's quantiser); "
                         f"quantisable: {', '.join(n for n, x in GGUF_TYPES.items() if x.can_quantize)}")
    t.row_bytes(weight.shape[-1])
    w = weight.detach().float().cpu().numpy()
    return torch.from_numpy(np.ascontiguousarray(quantize(w, GGMLQuantizationType(t.ggml_type)))).to(weight.device)
