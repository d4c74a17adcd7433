"""The dense few-rows matmul (llmkit::few_rows_mm): F.linear's numbers for 1-16 rows of fp32/bf16, opcheck, errors."""
import pytest
import torch
import torch.nn.functional as F

from llmkit.quant import ops

built = pytest.mark.skipif(not ops.load(), reason="the C++ matmul kernels could not be built here")


def _operands(shape, k, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, k, generator=g).to(dtype), torch.randn(n, k, generator=g).to(dtype),
            torch.randn(n, generator=g).to(dtype))


@built
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1,), (2,), (3, 1), (2, 4), (9,), (16,)])  # one tile of 8 rows, past it, the limit
# k: a multiple of the 32-wide loop, 16 past it, and a ragged tail; n odd so the threads split unevenly
@pytest.mark.parametrize("k, n", [(576, 97), (48, 33), (37, 5)])
def test_equals_the_float64_product(dtype, shape, k, n):
    x, w, b = _operands(shape, k, n, dtype)
    for bias in (b, None):
        y = torch.ops.llmkit.few_rows_mm(x, w, bias)
        assert y.shape == (*shape, n) and y.dtype == dtype
        exact = F.linear(x.double(), w.double(), None if bias is None else bias.double())
        # fp32 sums in another order than float64; bf16 adds the rounding of the output
        tol = 1e-5 if dtype == torch.float32 else 8e-3
        torch.testing.assert_close(y.double() / exact.abs().max(), exact / exact.abs().max(), rtol=0, atol=tol)


@built
def test_empty_and_opcheck():
    x, w, b = _operands((0,), 64, 8, torch.float32)
    assert torch.ops.llmkit.few_rows_mm(x, w, b).shape == (0, 8)
    x, w, b = _operands((3,), 64, 40, torch.float32)
    torch.library.opcheck(torch.ops.llmkit.few_rows_mm.default, (x, w, b))
    torch.library.opcheck(torch.ops.llmkit.few_rows_mm.default, (x.bfloat16(), w.bfloat16(), None))


@built
def test_refuses_what_it_does_not_compute():
    x, w, b = _operands((3,), 64, 8, torch.float32)
    with pytest.raises(RuntimeError, match="at most 16 rows"):
        torch.ops.llmkit.few_rows_mm(torch.randn(17, 64), w, b)
    with pytest.raises(RuntimeError, match="share a dtype"):
        torch.ops.llmkit.few_rows_mm(x.bfloat16(), w, b)
    with pytest.raises(RuntimeError, match="fp32 or bf16"):
        torch.ops.llmkit.few_rows_mm(x.half(), w.half(), None)
    with pytest.raises(RuntimeError, match="features"):
        torch.ops.llmkit.few_rows_mm(torch.randn(3, 32), w, b)
