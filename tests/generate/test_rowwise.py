import torch
import torch.nn.functional as F

from llmkit.generate.rowwise import RowwiseLinear, rowwise, rowwise_linear


def _weights(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(48, 32, generator=g).to(dtype), torch.randn(48, generator=g).to(dtype)


def test_rowwise_linear_equals_linear():
    w, b = _weights()
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(rowwise_linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rowwise_linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_rowwise_linear_bf16_accumulates_in_fp32():
    w, b = _weights(torch.bfloat16)
    x = torch.randn(1, 32).bfloat16()
    exact = F.linear(x.double(), w.double(), b.double())
    y = rowwise_linear(x, w, b)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), exact, rtol=1e-2, atol=1e-2)


def test_mode_rewrites_only_small_batches():
    w, b = _weights()
    one, many = torch.randn(1, 1, 32), torch.randn(3, 1, 32)
    with RowwiseLinear(max_rows=2):
        small, large = F.linear(one, w, b), F.linear(many, w, b)
        module = torch.nn.Linear(32, 48)
        via_module = module(one)
    assert torch.equal(small, rowwise_linear(one, w, b))
    assert torch.equal(large, F.linear(many, w, b))
    assert torch.equal(via_module, rowwise_linear(one, module.weight, module.bias))


def test_rowwise_wraps_a_function():
    w, _ = _weights()
    x = torch.randn(1, 32)
    fn = rowwise(lambda a: F.linear(a, w), max_rows=1)
    assert torch.equal(fn(x), rowwise_linear(x, w))


def test_compiled_rowwise_matches_linear():
    w, b = _weights()
    x = torch.randn(1, 32)
    compiled = torch.compile(rowwise(lambda a: F.linear(a, w, b)), fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(x), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
