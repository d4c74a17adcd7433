import torch
import torch.nn.functional as F

from llmkit.generate import compile as compile_mod
from llmkit.generate import rowwise as rowwise_mod
from llmkit.generate.rowwise import RowwiseLinear, rowwise_linear


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


def _spy(monkeypatch) -> list:
    """Record the row counts that reach rowwise_linear (the mode looks it up at call time)."""
    calls = []

    def spy(x, weight, bias=None):
        calls.append(x.numel() // x.shape[-1])
        return rowwise_linear(x, weight, bias)

    monkeypatch.setattr(rowwise_mod, "rowwise_linear", spy)
    return calls


def test_mode_rewrites_only_small_batches(monkeypatch):
    calls = _spy(monkeypatch)
    w, b = _weights()
    one, many = torch.randn(1, 1, 32), torch.randn(3, 1, 32)
    module = torch.nn.Linear(32, 48)
    with RowwiseLinear(max_rows=2, few_rows=2):
        small, large, via_module = F.linear(one, w, b), F.linear(many, w, b), module(one)
    assert calls == [1, 1]  # the 3-row call kept F.linear
    assert torch.equal(large, F.linear(many, w, b))
    torch.testing.assert_close(small, F.linear(one, w, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(via_module, module(one), rtol=1e-5, atol=1e-5)


def test_compile_step_rewrites_on_cpu_only(monkeypatch):
    calls = _spy(monkeypatch)
    traced = []
    monkeypatch.setattr(compile_mod.torch, "compile", lambda fn, **kw: traced.append(fn) or fn)
    w = _weights()[0]
    step = lambda a: F.linear(a, w)  # noqa: E731
    compile_mod.compile_step(step, torch.device("cpu"))(torch.randn(1, 32))
    assert calls == [1]
    compile_mod.compile_step(step, torch.device("cuda"))
    assert traced[-1] is step  # CUDA graphs instead


def _compiled_under_mode(fn):
    def traced(a):
        with RowwiseLinear():
            return fn(a)

    return torch.compile(traced, fullgraph=True, dynamic=False)


def test_compiled_rowwise_matches_linear():
    w, b = _weights()
    x = torch.randn(1, 32)
    compiled = _compiled_under_mode(lambda a: F.linear(a, w, b))
    torch.testing.assert_close(compiled(x), F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_materialised_input_keeps_the_product(monkeypatch):
    """Large weights first materialise their input (an identity view); compiled, the result is unchanged."""
    monkeypatch.setattr(rowwise_mod, "MATERIALISE_INPUT_FROM", 0)
    w, b = _weights()
    x = torch.randn(1, 32)
    norm = torch.nn.RMSNorm(32)
    compiled = _compiled_under_mode(lambda a: F.linear(norm(a), w, b))
    torch.testing.assert_close(compiled(x), F.linear(norm(x), w, b), rtol=1e-5, atol=1e-5)


def test_a_few_rows_go_to_the_kernel(monkeypatch):
    """2..few_rows rows take llmkit::few_rows_mm where it applies (fp32/bf16 on the CPU); more rows, or a
    tensor it does not take, keep F.linear."""
    seen = []
    monkeypatch.setattr(rowwise_mod, "few_rows_kernel_applies", lambda x, w: seen.append(x.shape) or True)
    monkeypatch.setattr(torch.ops.llmkit, "few_rows_mm", lambda x, w, b: F.linear(x, w, b) + 1, raising=False)
    w, b = _weights()
    with RowwiseLinear(max_rows=1, few_rows=4):
        four, five = F.linear(torch.zeros(4, 32), w, bias=b), F.linear(torch.zeros(5, 32), w, b)
    assert seen == [(4, 32)]
    torch.testing.assert_close(four, b.expand(4, -1) + 1)  # the kernel's result, bias passed by keyword
    torch.testing.assert_close(five, b.expand(5, -1))


def test_kernel_applies_to_matching_cpu_floats():
    w = torch.randn(8, 16)
    if not rowwise_mod.ops.load():
        assert not rowwise_mod.few_rows_kernel_applies(torch.randn(2, 16), w)
        return
    assert rowwise_mod.few_rows_kernel_applies(torch.randn(2, 16), w)
    assert rowwise_mod.few_rows_kernel_applies(torch.randn(2, 16).bfloat16(), w.bfloat16())
    assert not rowwise_mod.few_rows_kernel_applies(torch.randn(2, 16).half(), w.half())
    assert not rowwise_mod.few_rows_kernel_applies(torch.randn(2, 16).bfloat16(), w)


def test_compiled_few_rows_match_linear():
    w, b = _weights()
    x = torch.randn(4, 32)
    compiled = _compiled_under_mode(lambda a: F.linear(a, w, b))
    torch.testing.assert_close(compiled(x), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
