"""The C++ GGUF operators: equal to the torch fallback, pass opcheck, differentiate in x, compile without breaks."""
import pytest
import torch
import torch.nn.functional as F

from llmkit.quant import gguf_ops
from llmkit.quant.gguf_types import GGUF_TYPES, dequantize_blocks
from llmkit.quant.primitives import round_activations_int8
from tests.quant.gguf_blocks import random_blocks

built = pytest.mark.skipif(not gguf_ops.load(), reason="the C++ GGUF kernels could not be built here")
TYPES = list(GGUF_TYPES)


def test_a_failed_build_warns_and_reports_false(monkeypatch):
    import torch.utils.cpp_extension as ext

    def broken(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(ext, "load", broken)
    with pytest.warns(RuntimeWarning, match="Ninja is required"):
        assert gguf_ops.load.__wrapped__() is False


@built
@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_op_equals_the_fallback(qtype):
    w = random_blocks(qtype, 40, 512).view(4, 10, -1)
    t = GGUF_TYPES[qtype]
    out = torch.ops.llmkit.gguf_dequantize(w, t.ggml_type, 512, torch.float32)
    torch.testing.assert_close(out, dequantize_blocks(w, qtype, 512), rtol=0, atol=0)
    assert gguf_ops.gguf_dequantize(w, qtype, 512, torch.bfloat16).dtype == torch.bfloat16


@built
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("rows", [1, 3, 6, 20])  # fused row dots (<= 4), a row buffer (<= 8), tiled GEMM
@pytest.mark.parametrize("int8", [False, True])
def test_mm_equals_the_dequantised_product(qtype, rows, int8):
    w = random_blocks(qtype, 70, 512)
    x = torch.randn(rows, 512, generator=torch.Generator().manual_seed(1))
    dense = dequantize_blocks(w, qtype, 512).double()
    y = torch.ops.llmkit.gguf_mm(x, w, GGUF_TYPES[qtype].ggml_type, 512, int8)
    scale = (x.double() @ dense.T).abs().max()
    rounded = int8 and rows <= 8 and torch.ops.llmkit.gguf_int8_activations()
    exact_x = round_activations_int8(x) if rounded else x
    torch.testing.assert_close(y.double() / scale, exact_x.double() @ dense.T / scale, rtol=0, atol=1e-6)
    # and the torch fallback (F.linear on the torch dequantisation) within int8 rounding of x
    torch.testing.assert_close(y / scale.float(), F.linear(x, dense.float()) / scale.float(), rtol=0, atol=2e-2)


@built
def test_mm_keeps_leading_dims_and_dtype():
    w = random_blocks("q4_1", 48, 64)
    x = torch.randn(2, 3, 64).to(torch.bfloat16)
    y = gguf_ops.gguf_linear(x, w, "q4_1", 64, bias=torch.ones(48), int8_activations=True)
    assert y.shape == (2, 3, 48) and y.dtype == torch.bfloat16
    ref = F.linear(x.float(), dequantize_blocks(w, "q4_1", 64)) + 1
    torch.testing.assert_close(y.float() / ref.abs().max(), ref / ref.abs().max(), rtol=0, atol=2e-2)


@built
def test_bad_shapes_name_the_problem():
    w = random_blocks("q8_0", 4, 64)
    with pytest.raises(RuntimeError, match="weight rows have 68 bytes, 102 expected for in_features=96"):
        torch.ops.llmkit.gguf_mm(torch.randn(1, 96), w, 8, 96, False)
    with pytest.raises(RuntimeError, match="unsupported ggml type id 6"):
        torch.ops.llmkit.gguf_mm(torch.randn(1, 64), w, 6, 64, False)


@built
@pytest.mark.slow  # opcheck traces each op several ways (~10 s)
@pytest.mark.parametrize("qtype", ["q8_0", "q4_k"])
def test_opcheck(qtype):
    w = random_blocks(qtype, 16, 256)
    t = GGUF_TYPES[qtype].ggml_type
    for rows, int8 in ((1, True), (12, False)):
        x = torch.randn(rows, 256, requires_grad=True)
        torch.library.opcheck(torch.ops.llmkit.gguf_mm.default, (x, w, t, 256, int8))
    torch.library.opcheck(torch.ops.llmkit.gguf_dequantize.default, (w, t, 256, torch.float32))


@built
@pytest.mark.parametrize("rows", [1, 12])
def test_input_gradient_is_grad_times_the_dequantised_weight(rows):
    w = random_blocks("q4_0", 24, 64)
    x = torch.randn(rows, 64, requires_grad=True)
    grad = torch.randn(rows, 24)
    gguf_ops.gguf_linear(x, w, "q4_0", 64).backward(grad)
    torch.testing.assert_close(x.grad, grad @ dequantize_blocks(w, "q4_0", 64))


@built
def test_compiles_without_graph_breaks():
    w = random_blocks("q4_1", 32, 64)
    x = torch.randn(1, 64)

    def f(x):
        return torch.relu(gguf_ops.gguf_linear(x, w, "q4_1", 64)) * 2

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), f(x))
