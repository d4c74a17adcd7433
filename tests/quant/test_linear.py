"""Quantised linears: kernels vs their float reference, layouts, dequantize(), backward."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmkit.quant import Fp8Linear, Int4Linear, Int8Linear, Linear4bit, LLMInt8Linear, W8A8Linear
from llmkit.quant import linear as linear_module
from llmkit.quant.primitives import unpack_int4


def _linear(in_f=64, out_f=48, bias=True, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f, bias=bias).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_kernel_equals_its_dequantized_weight(dtype):
    lin = _linear(dtype=dtype)
    q = Int8Linear.from_linear(lin)
    x = torch.randn(3, 5, 64).to(dtype)
    ref = F.linear(x.float(), q.dequantize().float(), lin.bias.float())
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(q(x).float(), ref, atol=tol, rtol=tol)
    assert q(x).dtype == dtype and (q.in_features, q.out_features) == (64, 48)
    if dtype == torch.float32:  # symmetric rounding: at most half a step per weight
        assert ((q.dequantize() - lin.weight).abs() <= q.scales[:, None] / 2 + 1e-6).all()


def test_int8_loaded_from_a_misaligned_buffer_is_used_in_place():
    """A memory-mapped safetensors file can put the int8 weight 8 bytes off a 64-byte boundary; the
    kernel reads it with unaligned loads, so loading keeps the file's pages instead of copying them."""
    q = Int8Linear.from_linear(_linear(128, 128, dtype=torch.bfloat16))
    state = q.state_dict()
    raw = torch.empty(128 * 128 + 64, dtype=torch.int8)
    offset = (8 - raw.data_ptr()) % 64 or 64
    state["weight"] = raw[offset:offset + 128 * 128].view(128, 128).copy_(state["weight"])
    assert state["weight"].data_ptr() % 64 == 8
    loaded = Int8Linear(128, 128, True, torch.bfloat16, device="meta")
    loaded.load_state_dict(state, assign=True)
    assert loaded.weight.data_ptr() == state["weight"].data_ptr()
    for rows in (1, 5, 20):
        x = torch.randn(rows, 128, dtype=torch.bfloat16)
        torch.testing.assert_close(loaded(x), q(x))


@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
def test_int4_kernel_equals_the_float_product(group_size):
    lin = _linear(256, 32)
    q = Int4Linear.from_linear(lin, group_size)
    assert q.kernel_layout  # out % 16 == 0 and a kernel group: the CPU kernel runs
    x = torch.randn(4, 256)
    torch.testing.assert_close(q(x), F.linear(x, q.dequantize(), lin.bias), atol=1e-4, rtol=1e-4)
    step = q.scales_and_zeros[..., 0].T.repeat_interleave(group_size, dim=1)
    assert ((q.dequantize() - lin.weight).abs() <= step / 2 + 1e-6).all()


def test_int4_state_dict_holds_the_portable_layout():
    lin = _linear(64, 32)
    q = Int4Linear.from_linear(lin, 32)
    codes = unpack_int4(q.state_dict()["weight_packed"]).float()  # (out, in)
    s, m = (q.scales_and_zeros[..., i].T.repeat_interleave(32, dim=1) for i in (0, 1))
    torch.testing.assert_close((codes - 8) * s + m, q.dequantize())


def test_int4_kernel_layout_built_in_row_chunks_equals_the_whole_conversion():
    """Rows go to the kernel's layout a chunk at a time (less memory held after loading): two full chunks
    and a ragged one must give the bytes that converting the whole matrix gives, and the same products."""
    out_f = 2 * linear_module.KERNEL_LAYOUT_ROWS + 80
    lin = _linear(128, out_f)
    q = Int4Linear.from_linear(lin, 64)
    assert q.kernel_layout
    codes = unpack_int4(q.state_dict()["weight_packed"]).int()  # the portable layout, back from the kernel's
    assert torch.equal(q.weight_packed, torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
    x = torch.randn(3, 128)
    torch.testing.assert_close(q(x), F.linear(x, q.dequantize(), lin.bias), atol=1e-4, rtol=1e-4)


def test_int4_shapes_the_kernel_cannot_take_fall_back():
    lin = _linear(64, 40)  # 40 output features: not a multiple of 16
    q = Int4Linear.from_linear(lin, 32)
    assert not q.kernel_layout
    x = torch.randn(2, 64)
    torch.testing.assert_close(q(x), F.linear(x, q.dequantize(), lin.bias))
    with pytest.raises(ValueError, match="group_size=48"):
        Int4Linear.from_linear(lin, 48)


@pytest.mark.parametrize("make", [
    Int8Linear.from_linear, lambda l: Int4Linear.from_linear(l, 32), Fp8Linear.from_linear, Linear4bit.from_linear,
    W8A8Linear.from_linear, LLMInt8Linear.from_linear])
def test_backward_goes_through_the_dequantized_weight(make):
    lin = _linear(64, 32)
    q = make(lin)
    x = torch.randn(3, 64, requires_grad=True)
    q(x).sum().backward()
    x2 = x.detach().requires_grad_()
    F.linear(x2, q.dequantize(), lin.bias).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)
    assert q.to_linear().weight.shape == lin.weight.shape


def test_smoothing_is_undone_by_dequantize():
    lin = _linear(64, 32)
    s = torch.rand(64) * 4 + 0.25
    q = Int8Linear.from_linear(lin, smooth=s)
    x = torch.randn(5, 64)
    torch.testing.assert_close(q(x), F.linear(x, q.dequantize(), lin.bias), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(q.dequantize(), lin.weight.detach(), atol=0.05, rtol=0)
