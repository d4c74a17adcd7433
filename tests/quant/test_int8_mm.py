"""The int8 weight-only operator (llmkit::int8_mm): exact and int8-activation numerics, opcheck, compile, scheme option."""
import pytest
import torch
from torch import nn

from llmkit.quant import Int8Linear, ops, quantize, rebuild
from llmkit.quant.primitives import round_activations_int8

built = pytest.mark.skipif(not ops.load(), reason="the C++ quantised-matmul kernels could not be built here")


def _operands(rows: int, k: int, n: int = 70, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    scales = torch.rand(n, generator=g) / 100 + 1e-3
    x = torch.randn(rows, k, generator=g)
    return x, w, scales


def _reference(x, w, scales):
    return (x.double() @ w.double().T) * scales.double()


@built
@pytest.mark.parametrize("rows", [1, 3, 8, 20])  # the row-streaming kernel (<= 8) and the GEMM path
# k: a multiple of the 64-wide vector loops, one 32-block past them, and (exact only) neither
@pytest.mark.parametrize("k, int8", [(576, False), (96, False), (40, False), (576, True), (96, True)])
def test_int8_mm_equals_the_float64_product(rows, k, int8):
    x, w, scales = _operands(rows, k)
    y = torch.ops.llmkit.int8_mm(x, w, scales, int8)
    ref = _reference(round_activations_int8(x) if int8 else x, w, scales)
    scale = ref.abs().max()
    torch.testing.assert_close(y.double() / scale, ref / scale, rtol=0, atol=1e-6)
    if int8:  # the rounding of x is what moves the result, by about half a percent
        exact = _reference(x, w, scales)
        assert 1e-4 < ((y.double() - exact).abs().max() / exact.abs().max()).item() < 3e-2


@built
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("int8", [False, True])
def test_int8_mm_keeps_leading_dims_and_dtype(dtype, int8):
    x, w, scales = _operands(6, 64)
    x = x.view(2, 3, 64).to(dtype)
    y = torch.ops.llmkit.int8_mm(x, w, scales, int8)
    assert y.shape == (2, 3, 70) and y.dtype == dtype
    ref = _reference(round_activations_int8(x.float()) if int8 else x.float(), w, scales).view(2, 3, 70)
    # only the output's rounding to the dtype (8 significant bits for bf16) separates them
    torch.testing.assert_close(y.double(), ref, atol=4e-3 * ref.abs().max().item(), rtol=0)


@built
def test_int8_mm_rejects_bad_operands():
    x, w, scales = _operands(1, 40)
    with pytest.raises(RuntimeError, match="divisible by 32"):
        torch.ops.llmkit.int8_mm(x, w, scales, True)
    with pytest.raises(RuntimeError, match="features"):
        torch.ops.llmkit.int8_mm(x[:, :32], w, scales, False)
    with pytest.raises(RuntimeError, match="scales for"):
        torch.ops.llmkit.int8_mm(x, w, scales[:3], False)
    with pytest.raises(RuntimeError, match="int8"):
        torch.ops.llmkit.int8_mm(x, w.float(), scales, False)


@built
@pytest.mark.parametrize("rows", [1, 12])
def test_int8_mm_passes_opcheck(rows):
    x, w, scales = _operands(rows, 64)
    torch.library.opcheck(torch.ops.llmkit.int8_mm.default, (x, w, scales, True))
    torch.library.opcheck(torch.ops.llmkit.int8_mm.default, (x.bfloat16(), w, scales, False))


@pytest.mark.parametrize("int8", [False, True])
def test_int8_linear_matches_its_torch_fallback(int8, monkeypatch):
    """The layer's torch path (no C++ build, other devices) computes the kernel's numbers."""
    torch.manual_seed(0)
    layer = Int8Linear.from_linear(nn.Linear(64, 48), int8_activations=int8)
    x = torch.randn(3, 64)
    y = layer(x)
    monkeypatch.setattr(ops, "native", lambda t: False)
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=1e-5)


def test_int8_activations_need_blocks_of_32():
    with pytest.raises(ValueError, match="divisible by 32"):
        Int8Linear(40, 16, int8_activations=True)


@built
@pytest.mark.slow
def test_compiled_int8_layer_traces_the_operator_and_matches_eager():
    from torch._dynamo.testing import EagerAndRecordGraphs

    torch.manual_seed(0)
    layer = Int8Linear.from_linear(nn.Linear(64, 48).to(torch.bfloat16), int8_activations=True)
    x = torch.randn(1, 64, dtype=torch.bfloat16)
    graphs = EagerAndRecordGraphs()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(layer, fullgraph=True)(x), layer(x))
        torch.compile(layer, fullgraph=True, backend=graphs)(x)
    assert "llmkit.int8_mm" in graphs.graphs[0].code


def test_int8_activations_is_a_scheme_option_that_survives_rebuild():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(2, 64)
    quantize(model, "int8", skip=(), int8_activations=True)
    assert model.quantization_config == {"quant_method": "int8", "int8_activations": True, "skip": []}
    assert all(m.int8_activations for m in model if isinstance(m, Int8Linear))
    with torch.device("meta"):
        empty = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    rebuild(empty, model.quantization_config)
    empty.load_state_dict(model.state_dict(), assign=True)
    torch.testing.assert_close(empty(x), model(x))
