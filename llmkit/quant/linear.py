"""Quantised linear layers: what every scheme swaps in for an ``nn.Linear``.

:class:`QuantLinear` holds what all of them share, so that a LoRA wrapper, the
saver and the loader treat them alike: ``in_features``/``out_features``, a
frozen float bias, ``dequantize()`` (the effective float weight, (out, in)),
an optional per-input-channel ``smooth`` vector the input is divided by (the
scales AWQ and SmoothQuant migrate into the weight; kept here instead of being
folded into the previous layer, which would need to know the model's graph),
and a backward pass through ``dequantize()`` so adapters can train on top.
A subclass adds its buffers and ``_matmul``; its constructor builds empty
buffers of the right shapes, which is how the loader rebuilds a quantised model
on the meta device before assigning the file's tensors.

Weight-only layers here (gpt-fast, torchao):
- :class:`Int8Linear`: symmetric int8 per output channel; on CPU the product is our
  ``llmkit::int8_mm`` (:mod:`llmkit.quant.ops`): exact fp32 products, or with
  ``int8_activations`` llama.cpp's recipe (x rounded to int8 per 32 features, VNNI dot
  products; on SmolLM2 about 1.1x the exact path's batch-1 decode speed, each product ~0.5% off).
- :class:`Int4Linear`: asymmetric int4 per group of 32/64/128/256 input columns;
  on CPU ``aten._weight_int4pack_mm_for_cpu``, whose packed layout depends on the
  machine's vector width, so files hold the portable layout of
  :func:`~llmkit.quant.primitives.pack_int4` and the kernel's is built on load
  (:meth:`Int4Linear._load_from_state_dict`) and undone on save. The kernel needs
  out_features divisible by 16; other shapes (and other devices) dequantise and
  use ``F.linear``, with identical results up to rounding.
- :class:`Fp8Linear`: e4m3 (or e5m2) weights with per-channel scales, dequantised
  per call (CPUs have no fp8 matmul): a memory saving, not a speed-up.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.quant import ops
from llmkit.quant.primitives import (FP8_DTYPES, affine_params, dequantize_fp8, pack_int4, quantize_affine,
                                     quantize_fp8, round_activations_int8, unpack_int4)

INT4_KERNEL_GROUPS = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu accepts
KERNEL_LAYOUT_ROWS = 256  # rows converted to the CPU kernel's layout at once: a multiple of its row blocks
ACTIVATION_BLOCK = 32  # features per int8 activation scale (llama.cpp's Q8 block; int8_mm.cpp's kBlock)


class _ThroughDequantized(torch.autograd.Function):
    """y = layer(x) in forward; dL/dx = dL/dy @ W_hat in backward, W_hat re-dequantised, never saved."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "QuantLinear") -> torch.Tensor:
        ctx.layer = layer
        return layer._matmul(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ ctx.layer._weight_for_backward().to(grad.dtype), None  # (M, out) @ (out, in)


class QuantLinear(nn.Module):
    """Base of the quantised linears: features, bias, optional input smoothing, forward and dequantize.

    Args:
        in_features, out_features: the float layer's.
        bias: keep a (frozen) bias.
        dtype: compute dtype: activations, scales and the bias.
        smooth: register a ``smooth`` (in,) buffer; inputs are divided by it (the weight was multiplied).
        device: where the buffers go (``meta`` when rebuilding for a load).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, smooth: bool = False,
                 device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features, self.compute_dtype = in_features, out_features, dtype
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False) \
            if bias else None
        self.register_buffer("smooth", torch.ones(in_features, dtype=dtype, device=device) if smooth else None)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        """(M, in) -> (M, out) without bias or smoothing; ``x`` in the compute dtype."""
        raise NotImplementedError

    def _weight(self) -> torch.Tensor:
        """The stored weight dequantised, before undoing the smoothing: (out, in) float32."""
        raise NotImplementedError

    def _weight_for_backward(self) -> torch.Tensor:
        return self._weight()

    def dequantize(self) -> torch.Tensor:
        """The effective float weight W (out, in) in the compute dtype: forward(x) ~= x W^T + b."""
        w = self._weight()
        if self.smooth is not None:
            w = w / self.smooth.float()
        return w.to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out), in x's dtype
        shape = x.shape
        h = x.reshape(-1, shape[-1]).to(self.compute_dtype)
        if self.smooth is not None:
            h = h / self.smooth
        if torch.is_grad_enabled() and h.requires_grad:
            y = _ThroughDequantized.apply(h, self)
        else:
            y = self._matmul(h)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def to_linear(self) -> nn.Linear:
        """A float ``nn.Linear`` (compute dtype) holding the dequantised weight."""
        device = next(self.buffers()).device
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None, device=device,
                           dtype=self.compute_dtype)
        with torch.no_grad():
            linear.weight.copy_(self.dequantize())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def _copy_float(self, linear: nn.Linear, smooth: torch.Tensor | None) -> None:
        """Copy the bias and smoothing vector of the layer being quantised."""
        if linear.bias is not None:
            self.bias.data.copy_(linear.bias.detach())
        if smooth is not None:
            self.smooth.copy_(smooth)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"smooth={self.smooth is not None}")


def smoothed_weight(linear: nn.Linear, smooth: torch.Tensor | None) -> torch.Tensor:
    """The weight to quantise: W diag(s) when smoothing (the input is divided by s), float32."""
    w = linear.weight.detach().float()
    # rounded to the dtype the layer will store it in, so the input is divided by exactly what W was multiplied by
    return w if smooth is None else w * smooth.to(linear.weight.dtype).float()


class Int8Linear(QuantLinear):
    """Weight-only int8, symmetric per output channel: ``weight`` (out, in) int8, ``scales`` (out,).

    ``int8_activations``: round x to int8 per 32 input features before the product (llama.cpp's
    Q8 numerics, faster decoding on VNNI CPUs); needs in_features divisible by 32.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, dtype: torch.dtype = torch.float32,
                 smooth: bool = False, device: torch.device | str | None = None, int8_activations: bool = False):
        super().__init__(in_features, out_features, bias, dtype, smooth, device)
        if int8_activations and in_features % ACTIVATION_BLOCK:
            raise ValueError(f"int8_activations needs in_features divisible by {ACTIVATION_BLOCK}, "
                             f"got {in_features}")
        self.int8_activations = int8_activations
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=dtype, device=device))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, smooth: torch.Tensor | None = None,
                    int8_activations: bool = False) -> "Int8Linear":
        w = smoothed_weight(linear, smooth)
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.dtype,
                smooth is not None, linear.weight.device, int8_activations)
        scale, _ = affine_params(w, 8)
        q.weight.copy_(quantize_affine(w, scale, None, 8))
        q.scales.copy_(scale[:, 0])
        q._copy_float(linear, smooth)
        return q

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        if ops.native(x):
            return torch.ops.llmkit.int8_mm(x, self.weight, self.scales, self.int8_activations)
        if self.int8_activations:
            x = round_activations_int8(x, ACTIVATION_BLOCK)
        return F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype)  # gpt-fast's form; inductor fuses the cast

    def _weight(self) -> torch.Tensor:
        return self.weight.float() * self.scales.float()[:, None]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, int8_activations={self.int8_activations}"


class Int4Linear(QuantLinear):
    """Weight-only int4, asymmetric per group: ``weight_packed`` (out, in / 2) uint8, ``scales_and_zeros``.

    ``scales_and_zeros`` (in / group, out, 2) holds (s, m) per group with w = (q - 8) * s + m, the
    convention of torch's int4 kernels (and gpt-fast, torchao); an integer zero point z gives
    m = (8 - z) * s. Codes are 0..15, so 2- and 3-bit codes (GPTQ) use the same container.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, dtype: torch.dtype = torch.float32,
                 group_size: int = 64, smooth: bool = False, device: torch.device | str | None = None):
        super().__init__(in_features, out_features, bias, dtype, smooth, device)
        check_int4_shape(in_features, group_size)
        self.group_size = group_size
        self.register_buffer("weight_packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8,
                                                          device=device))
        self.register_buffer("scales_and_zeros", torch.zeros(in_features // group_size, out_features, 2,
                                                             dtype=dtype, device=device))
        self.kernel_layout = False  # True once weight_packed holds the CPU kernel's layout

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, group_size: int = 64, smooth: torch.Tensor | None = None,
                    clip: torch.Tensor | float = 1.0) -> "Int4Linear":
        """Round-to-nearest int4 of ``linear`` (``clip``: AWQ's per-group range shrink)."""
        w = smoothed_weight(linear, smooth)
        scale, zero = affine_params(w, 4, symmetric=False, group_size=group_size, clip=clip)
        q = quantize_affine(w, scale, zero, 4, group_size)
        return cls.from_codes(linear, q, scale, zero, group_size, smooth)

    @classmethod
    @torch.no_grad()
    def from_codes(cls, linear: nn.Linear, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                   group_size: int, smooth: torch.Tensor | None = None) -> "Int4Linear":
        """Pack given codes (out, in) in [0, 15] with per-group scale and zero point (out, in / group)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.dtype,
                    group_size, smooth is not None, linear.weight.device)
        layer.scales_and_zeros.copy_(torch.stack([scale.T, ((8 - zero) * scale).T], dim=-1))
        layer.weight_packed.copy_(pack_int4(codes))
        layer._to_kernel_layout()
        layer._copy_float(linear, smooth)
        return layer

    # ----- layouts -----
    def _kernel_fits(self) -> bool:
        return (self.weight_packed.device.type == "cpu" and self.out_features % 16 == 0
                and self.group_size in INT4_KERNEL_GROUPS)

    def _to_kernel_layout(self) -> None:
        if self._kernel_fits() and not self.kernel_layout:
            # into a buffer allocated first, a few rows at a time: the kernel takes int32 codes (8x the packed
            # bytes), and whole-matrix temporaries freed between the layers' new buffers left the allocator
            # holding ~230 MiB after loading SmolLM2. The layout permutes within blocks of at most 64 rows,
            # so row chunks convert independently.
            packed = torch.empty_like(self.weight_packed)
            for start in range(0, self.out_features, KERNEL_LAYOUT_ROWS):
                rows = self.weight_packed[start:start + KERNEL_LAYOUT_ROWS]
                packed[start:start + len(rows)] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                    unpack_int4(rows).int(), 1)
            self.weight_packed = packed
            self.kernel_layout = True

    def _codes(self) -> torch.Tensor:
        """(out, in) codes, whatever the layout."""
        nibbles = unpack_int4(self.weight_packed)
        if not self.kernel_layout:
            return nibbles
        codes = torch.empty(self.out_features * self.in_features, dtype=torch.uint8)
        codes[_kernel_order(self.out_features, self.in_features)] = nibbles.flatten()
        return codes.view(self.out_features, self.in_features)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.kernel_layout:
            destination[prefix + "weight_packed"] = pack_int4(self._codes())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.kernel_layout = False  # the file holds the portable layout
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if not self.weight_packed.is_meta:
            self._to_kernel_layout()

    # ----- compute -----
    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        sz = self.scales_and_zeros.to(x.dtype)
        if self.kernel_layout:
            if x.device.type != "cpu":
                raise RuntimeError("this Int4Linear holds the CPU kernel's layout; quantise or load it on its device")
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.weight_packed, self.group_size, sz)
        return F.linear(x, self._weight().to(x.dtype))

    def _weight(self) -> torch.Tensor:
        codes = self._codes().float()  # (out, in)
        s, m = (self.scales_and_zeros[..., i].T.float().repeat_interleave(self.group_size, dim=1) for i in (0, 1))
        return (codes - 8) * s + m

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"


@functools.lru_cache(maxsize=16)
def _kernel_order(out_features: int, in_features: int) -> torch.Tensor:
    """Where each nibble of the CPU kernel's packed (out, in) weight comes from: (out * in,) row-major indices.

    The kernel's layout is a permutation of the codes that depends on the machine's vector width, so
    it is read off the kernel itself: codes equal to a base-16 digit of their own index are packed and
    unpacked, one digit per call, and the digits reassemble every nibble's source index.
    """
    n = out_features * in_features
    index, order, scale = torch.arange(n), torch.zeros(n, dtype=torch.long), 1
    while scale < n:
        digit = (index // scale % 16).view(out_features, in_features).int()
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(digit, 1)
        order += unpack_int4(packed).flatten().long() * scale
        scale *= 16
    return order


def check_int4_shape(in_features: int, group_size: int) -> None:
    """ValueError unless ``group_size`` is even and divides ``in_features`` (groups never straddle rows)."""
    if group_size <= 0 or group_size % 2 or in_features % group_size:
        raise ValueError(f"group_size={group_size} must be even and divide in_features={in_features}")


class Fp8Linear(QuantLinear):
    """fp8 weights with per-output-channel scales: ``weight`` (out, in) float8, ``scales`` (out,) float32."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, dtype: torch.dtype = torch.float32,
                 fmt: str = "e4m3", device: torch.device | str | None = None):
        super().__init__(in_features, out_features, bias, dtype, False, device)
        if fmt not in FP8_DTYPES:
            raise ValueError(f"fp8 fmt={fmt!r}: choose from {', '.join(FP8_DTYPES)}")
        self.fmt = fmt
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=FP8_DTYPES[fmt], device=device))
        self.register_buffer("scales", torch.ones(out_features, 1, dtype=torch.float32, device=device))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, fmt: str = "e4m3") -> "Fp8Linear":
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.dtype, fmt,
                linear.weight.device)
        codes, scale = quantize_fp8(linear.weight.detach(), fmt)
        q.weight.copy_(codes)
        q.scales.copy_(scale)
        q._copy_float(linear, None)
        return q

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._weight().to(x.dtype))

    def _weight(self) -> torch.Tensor:
        return dequantize_fp8(self.weight, self.scales)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fmt={self.fmt}"
