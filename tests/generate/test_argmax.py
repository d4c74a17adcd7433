"""The C++ argmax kernel returns torch.argmax's indices: ties, NaNs, -inf rows, any row count and length."""
import pytest
import torch

from llmkit.generate import argmax as am

built = pytest.mark.skipif(not am.load(), reason="the C++ argmax kernel could not be built here")


@built
@pytest.mark.parametrize("rows, vocab", [(1, 49152), (3, 17), (70, 1000), (2, 5), (1, 1)])
def test_argmax_equals_torch(rows, vocab):
    g = torch.Generator().manual_seed(rows * vocab)
    x = torch.randn(rows, vocab, generator=g)
    x[0, vocab // 2:] = x[0].max() + 1  # a tie: the first of equal maxima wins
    if rows > 1:
        x[1] = float("-inf")
    if rows > 2:
        x[2, vocab - 1] = x[2, vocab // 3] = float("nan")  # NaN counts as the largest: the first one
        x[2, 0] = float("inf")
    got = torch.ops.llmkit.argmax_rows(x)
    assert got.dtype == torch.long and torch.equal(got, x.argmax(dim=-1))
    assert torch.equal(am.argmax(x), x.argmax(dim=-1))


@built
def test_argmax_takes_views_and_other_dtypes():
    x = torch.randn(40, 6)
    assert torch.equal(am.argmax(x.t()), x.t().argmax(dim=-1))  # non-contiguous: copied first
    assert torch.equal(am.argmax(x.bfloat16()), x.bfloat16().argmax(dim=-1))  # torch's own path
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.llmkit.argmax_rows(x.double())
