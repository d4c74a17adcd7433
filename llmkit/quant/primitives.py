"""Quantisation primitives: affine int quantisation at any granularity, int4 packing, fp8 casts.

One affine code covers every integer scheme in this package. A tensor is cut
into groups along its last dimension (the input features of a linear weight):
``group_size=None`` is one group per row (per output channel), ``group_size=-1``
one group for the whole tensor, and ``group_size=g`` groups of ``g`` columns.
Each group gets a scale ``s`` and, when asymmetric, a zero point ``z``:

- symmetric:  q = clamp(round(x / s), -2^(b-1), 2^(b-1) - 1),  s = absmax / (2^(b-1) - 1)
  (the most negative code is unused, so the range is symmetric and x = 0 maps to q = 0);
- asymmetric: q = clamp(round(x / s) + z, 0, 2^b - 1),  s = (max - min) / (2^b - 1),  z = round(-min / s)
  (min and max are widened to include 0, so zero is exactly representable, as padding needs).

Both dequantise as x_hat = (q - z) * s (z = 0 when symmetric). Rounding to the
nearest code bounds the error per element by s / 2 for values inside the
range, which the tests check.

int4 codes are packed two per byte, the even column in the low nibble, in an
(out, in / 2) uint8 tensor: the portable layout every file uses (torch's CPU
int4 kernel wants its own, machine-dependent layout, built on load by
:mod:`llmkit.quant.linear`). fp8 uses torch's ``float8_e4m3fn`` (max 448, more
mantissa) and ``float8_e5m2`` (max 57344, more range) with a scale that maps
each group's absmax onto the format's largest finite value.
"""
from __future__ import annotations

import torch

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
TINY = torch.finfo(torch.float32).tiny  # floor for scales, so an all-zero group divides by something


def int_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax) of a ``bits``-bit code: [-(2^(b-1) - 1), 2^(b-1) - 1] or [0, 2^b - 1]."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits={bits}: integer quantisation supports 2 to 8 bits")
    return (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


def grouped(x: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """View ``x`` (..., n) as (groups, members): per row (None), per tensor (-1) or per ``group_size`` columns."""
    if group_size is None:
        return x.reshape(-1, x.shape[-1])
    if group_size == -1:
        return x.reshape(1, -1)
    if group_size <= 0 or x.shape[-1] % group_size:
        raise ValueError(f"group_size={group_size} must be positive and divide the last dimension ({x.shape[-1]})")
    return x.reshape(-1, group_size)


def _group_shape(x: torch.Tensor, group_size: int | None) -> tuple[int, ...]:
    """Shape of the per-group scales: (..., 1) per row, () per tensor, (..., n / g) per group."""
    if group_size is None:
        return (*x.shape[:-1], 1)
    if group_size == -1:
        return ()
    return (*x.shape[:-1], x.shape[-1] // group_size)


def affine_params(x: torch.Tensor, bits: int, symmetric: bool = True, group_size: int | None = None,
                  clip: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale and zero point of each group of ``x``.

    Args:
        x: (..., n) float tensor.
        bits: code width.
        symmetric: zero point 0 (signed codes) or an integer zero point (unsigned codes).
        group_size: None = per row, -1 = per tensor, g = groups of g columns.
        clip: shrink each group's range by this factor (AWQ's clipping search); broadcast over the groups.
    Returns:
        scale and zero (None when symmetric), float32, shaped (..., 1), () or (..., n / g) as above.
    """
    qmin, qmax = int_range(bits, symmetric)
    g = grouped(x.float(), group_size)  # (groups, members)
    shape = _group_shape(x, group_size)
    clip = torch.as_tensor(clip, dtype=torch.float32, device=x.device).reshape(-1)
    if symmetric:
        scale = (g.abs().amax(dim=1) * clip / qmax).clamp(min=TINY)
        return scale.reshape(shape), None
    lo = (g.amin(dim=1) * clip).clamp(max=0)
    hi = (g.amax(dim=1) * clip).clamp(min=0)
    scale = ((hi - lo) / qmax).clamp(min=TINY)
    zero = (-lo / scale).round().clamp(qmin, qmax)
    return scale.reshape(shape), zero.reshape(shape)


def _expand(p: torch.Tensor, x: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """Broadcast per-group parameters back over the members: (..., n)."""
    if group_size is None or group_size == -1:
        return p
    return p.repeat_interleave(group_size, dim=-1)


def quantize_affine(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int,
                    group_size: int | None = None) -> torch.Tensor:
    """Integer codes of ``x`` (..., n) for the given group parameters: int8 (int codes fit in 8 bits)."""
    qmin, qmax = int_range(bits, zero is None)
    q = x.float() / _expand(scale, x, group_size)
    if zero is not None:
        q = q + _expand(zero, x, group_size)
    # signed codes fit int8 and unsigned ones uint8 for every width up to 8 bits
    return q.round().clamp(qmin, qmax).to(torch.int8 if qmin < 0 else torch.uint8)


def dequantize_affine(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                      group_size: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x_hat = (q - z) * s, (..., n) in ``dtype``."""
    x = q.float()
    if zero is not None:
        x = x - _expand(zero.float(), q, group_size)
    return (x * _expand(scale.float(), q, group_size)).to(dtype)


def fake_quantize(x: torch.Tensor, bits: int, symmetric: bool = True, group_size: int | None = None,
                  clip: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Quantise and dequantise ``x`` in one go (round-to-nearest), in ``x``'s dtype."""
    scale, zero = affine_params(x, bits, symmetric, group_size, clip)
    return dequantize_affine(quantize_affine(x, scale, zero, bits, group_size), scale, zero, group_size, x.dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(..., n) codes in [0, 15] -> (..., n / 2) uint8, the even column in the low nibble."""
    if q.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even last dimension, got {q.shape[-1]}")
    q = q.to(torch.uint8)
    return q[..., ::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: (..., n / 2) uint8 -> (..., n) uint8 codes."""
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2)


def quantize_fp8(x: torch.Tensor, fmt: str = "e4m3", group_size: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled fp8: each group's absmax maps to the format's largest finite value.

    Args:
        x: (..., n) float tensor.
        fmt: "e4m3" or "e5m2".
        group_size: as in :func:`affine_params` (None = per row, the usual per-channel weight scale).
    Returns:
        codes (..., n) in the fp8 dtype and scale (float32, per group).
    """
    if fmt not in FP8_DTYPES:
        raise ValueError(f"fp8 format {fmt!r}: choose from {', '.join(FP8_DTYPES)}")
    dtype = FP8_DTYPES[fmt]
    g = grouped(x.float(), group_size)
    scale = (g.abs().amax(dim=1) / torch.finfo(dtype).max).clamp(min=TINY).reshape(_group_shape(x, group_size))
    return (x.float() / _expand(scale, x, group_size)).to(dtype), scale


def dequantize_fp8(codes: torch.Tensor, scale: torch.Tensor, group_size: int | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize_fp8`."""
    return (codes.float() * _expand(scale.float(), codes, group_size)).to(dtype)


def round_activations_int8(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """x rounded to int8 per ``block`` consecutive features, scale max|x| / 127, and back to x's dtype.

    llama.cpp's Q8 activations: the numbers an int8-activation kernel multiplies.
    x (..., K) with K divisible by ``block`` -> same shape and dtype.
    """
    b = x.float().reshape(*x.shape[:-1], -1, block)
    d = b.abs().amax(-1, keepdim=True) / 127
    return (torch.round(b / torch.where(d > 0, d, 1)) * d).reshape(x.shape).to(x.dtype)
