"""Round-trip error bounds of the quantisation primitives."""
import pytest
import torch

from llmkit.quant.primitives import (affine_params, dequantize_affine, dequantize_fp8, fake_quantize, int_range,
                                     pack_int4, quantize_affine, quantize_fp8, unpack_int4)

GRANULARITIES = [-1, None, 8, 32]  # per tensor, per channel, groups of 8 and 32


def _x(shape=(16, 64), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * torch.rand(shape[0], 1, generator=g) * 3


@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", GRANULARITIES)
def test_round_trip_error_is_at_most_half_a_step(bits, symmetric, group_size):
    x = _x()
    scale, zero = affine_params(x, bits, symmetric, group_size)
    q = quantize_affine(x, scale, zero, bits, group_size)
    qmin, qmax = int_range(bits, symmetric)
    assert q.min() >= qmin and q.max() <= qmax
    err = (dequantize_affine(q, scale, zero, group_size) - x).abs()
    step = scale if group_size in (None, -1) else scale.repeat_interleave(group_size, dim=-1)
    assert (err <= step / 2 + 1e-6).all()


@pytest.mark.parametrize("group_size", GRANULARITIES)
def test_asymmetric_codes_represent_zero_exactly(group_size):
    x = _x().abs() + 1  # all positive: the range is widened to include 0
    x[:, 5] = 0
    y = fake_quantize(x, 4, symmetric=False, group_size=group_size)
    assert (y[:, 5] == 0).all()


def test_finer_granularity_is_more_accurate():
    x = _x((64, 256))
    errs = [(fake_quantize(x, 4, False, g) - x).pow(2).mean() for g in (-1, None, 128, 32)]
    assert errs == sorted(errs, reverse=True)


def test_int4_packing_round_trips_and_halves_the_size():
    q = torch.randint(0, 16, (8, 32), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.shape == (8, 16) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), q)
    assert torch.equal(packed[0, 0], q[0, 0] | (q[0, 1] << 4))  # even column in the low nibble


@pytest.mark.parametrize("fmt, mantissa", [("e4m3", 3), ("e5m2", 2)])
def test_fp8_relative_error_is_half_an_ulp(fmt, mantissa):
    x = _x()
    codes, scale = quantize_fp8(x, fmt)
    y = dequantize_fp8(codes, scale)
    # normal numbers round to within 2^-(m+1) relative; the tiny absolute term covers subnormals
    bound = x.abs() * 2.0 ** -(mantissa + 1) + scale * 2.0 ** -9
    assert (y - x).abs().le(bound + 1e-7).all()
    assert y.abs().amax(dim=1).allclose(x.abs().amax(dim=1))  # each row's absmax is representable


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="group_size=24"):
        affine_params(torch.zeros(2, 64), 4, group_size=24)
    with pytest.raises(ValueError, match="bits=9"):
        affine_params(torch.zeros(2, 64), 9)
    with pytest.raises(ValueError, match="e3m4"):
        quantize_fp8(torch.zeros(2, 4), "e3m4")
