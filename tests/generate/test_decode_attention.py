import pytest
import torch
import torch.nn.functional as F

from llmkit.generate import compile as compile_mod
from llmkit.generate import decode_attention as da
from llmkit.model.attention import attend

built = pytest.mark.skipif(not da.load(), reason="the C++ decode-attention kernel could not be built here")


def test_a_failed_build_warns_and_reports_false(monkeypatch):
    import torch.utils.cpp_extension as ext

    def broken(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(ext, "load", broken)
    with pytest.warns(RuntimeWarning, match="Ninja is required"):
        assert da.load.__wrapped__() is False


def _inputs(b=2, h=3, t=3, s=300, d=64, dv=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g).to(dtype)
    k = torch.randn(b, h, s, d, generator=g).to(dtype)
    v = torch.randn(b, h, s, dv or d, generator=g).to(dtype)
    return q, k, v


def _reference(q, k, v, mask, scale):
    """fp64 softmax attention; mask (B or 1, S)."""
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return scores.softmax(-1) @ v.double()


@built
@pytest.mark.parametrize("d", [64, 128, 40])  # the two unrolled head sizes and the generic path
def test_matches_softmax_attention(d):
    q, k, v = _inputs(d=d)
    mask = torch.zeros(2, 300, dtype=torch.bool)
    mask[0, :257] = True  # several chunks, a ragged last one
    mask[1, 5:40] = True  # left padding, and nothing past slot 39
    out = da.decode_attention(q, k, v, mask, d ** -0.5)
    assert out.shape == (2, 3, 3, d) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _reference(q, k, v, mask, d ** -0.5), rtol=1e-5, atol=1e-5)


@built
def test_reads_only_allowed_slots():
    q, k, v = _inputs(b=1)
    mask = torch.zeros(1, 300, dtype=torch.bool)
    mask[0, ::3] = True
    poisoned_k, poisoned_v = k.clone(), v.clone()
    poisoned_k[:, :, ~mask[0]] = float("nan")
    poisoned_v[:, :, ~mask[0]] = float("nan")
    out = da.decode_attention(q, poisoned_k, poisoned_v, mask, 0.125)
    torch.testing.assert_close(out.double(), _reference(q, k, v, mask, 0.125), rtol=1e-5, atol=1e-5)


@built
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_accumulates_in_fp32(dtype):
    q, k, v = _inputs(dtype=dtype, dv=32)
    mask = torch.ones(1, 300, dtype=torch.bool)  # one row shared by the batch
    out = da.decode_attention(q, k, v, mask, 0.125)
    assert out.dtype == dtype
    exact = _reference(q, k, v, mask, 0.125)
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=2e-2)
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None], scale=0.125)
    assert (out.double() - exact).abs().max() <= 2 * (fused.double() - exact).abs().max() + 1e-3


@built
@pytest.mark.parametrize("d,t", [(64, 2), (64, 3), (64, 5), (64, 6), (128, 3)])  # full groups and every remainder
def test_bf16_rows_of_64_and_128_are_as_accurate_as_torch(d, t):
    """bf16 caches of these head sizes score with bf16 dot products on CPUs that have them (kBf16Route):
    holes in the mask, ragged blocks and poisoned disallowed slots, against fp64 and torch's own error."""
    q, k, v = _inputs(b=2, t=t, s=300, d=d, dtype=torch.bfloat16, seed=1)
    mask = torch.zeros(2, 300, dtype=torch.bool)
    mask[0, :237] = True
    mask[0, 100:117] = False
    mask[1, 3:300:7] = True
    poisoned_k, poisoned_v = k.clone(), v.clone()
    for b in range(2):
        poisoned_k[b, :, ~mask[b]] = float("nan")
        poisoned_v[b, :, ~mask[b]] = float("nan")
    out = da.decode_attention(q, poisoned_k, poisoned_v, mask, d ** -0.5)
    exact = _reference(q, k, v, mask, d ** -0.5)
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None], scale=d ** -0.5)
    assert (out.double() - exact).abs().max() <= 2 * (fused.double() - exact).abs().max() + 1e-3


@built
def test_no_allowed_slot_gives_zeros():
    q, k, v = _inputs(b=1)
    out = da.decode_attention(q, k, v, torch.zeros(1, 300, dtype=torch.bool), 0.125)
    assert torch.equal(out, torch.zeros_like(out))


@built
def test_bad_shapes_raise():
    q, k, v = _inputs()
    with pytest.raises(RuntimeError, match="mask must be"):
        da.decode_attention(q, k, v, torch.ones(2, 299, dtype=torch.bool), 0.125)
    with pytest.raises(RuntimeError, match="share a dtype"):
        da.decode_attention(q, k.double(), v, torch.ones(2, 300, dtype=torch.bool), 0.125)


def _spy(monkeypatch) -> list:
    calls = []
    real = da.decode_attention

    def spy(q, k, v, mask, scale):
        calls.append((tuple(q.shape), tuple(mask.shape)))
        return real(q, k, v, mask, scale)

    monkeypatch.setattr(da, "decode_attention", spy)
    return calls


@built
def test_mode_swaps_decode_calls_only(monkeypatch):
    calls = _spy(monkeypatch)
    q, k, v = _inputs(t=1)  # one new token
    kv_mask = torch.ones(2, 1, 1, 300, dtype=torch.bool)
    kv_mask[0, ..., :7] = False
    prefill_q = torch.randn(2, 3, 300, 64)
    with da.DecodeAttention():
        decode = attend(q, k, v, kv_mask, 0.125)
        prefill = attend(prefill_q, k, v, None, 0.125)  # causal, no mask: torch's attention
        dropped = F.scaled_dot_product_attention(q, k, v, attn_mask=kv_mask, dropout_p=0.5)
    assert calls == [((2, 3, 1, 64), (2, 300))]
    torch.testing.assert_close(decode, attend(q, k, v, kv_mask, 0.125), rtol=1e-5, atol=1e-5)
    assert torch.equal(prefill, attend(prefill_q, k, v, None, 0.125))
    assert dropped.shape == decode.shape


@built
def test_mode_takes_grouped_query_decoding(monkeypatch):
    """attend() folds a token's grouped query heads into rows of their K/V head: one kernel call."""
    calls = _spy(monkeypatch)
    q = torch.randn(1, 9, 1, 64)
    _, k, v = _inputs(b=1)
    mask = torch.ones(1, 1, 1, 300, dtype=torch.bool)
    with da.DecodeAttention():
        out = attend(q, k, v, mask, 0.125)
    assert calls == [((1, 3, 3, 64), (1, 300))]
    torch.testing.assert_close(out, attend(q, k, v, mask, 0.125, impl="eager"), rtol=1e-5, atol=1e-5)


@built
def test_compiled_step_calls_the_kernel(monkeypatch):
    calls = _spy(monkeypatch)
    q, k, v = _inputs(t=1)
    mask = torch.ones(2, 1, 1, 300, dtype=torch.bool)
    step = compile_mod.compile_step(lambda q, k, v, m: attend(q, k, v, m, 0.125), torch.device("cpu"))
    torch.testing.assert_close(step(q, k, v, mask), attend(q, k, v, mask, 0.125), rtol=1e-5, atol=1e-5)
    assert calls  # traced through the mode


def test_compiled_step_without_the_kernel_keeps_torch_attention(monkeypatch):
    monkeypatch.setattr(da, "load", lambda: False)
    calls = _spy(monkeypatch)
    q, k, v = _inputs(t=1)
    mask = torch.ones(2, 1, 1, 300, dtype=torch.bool)
    step = compile_mod.compile_step(lambda q, k, v, m: attend(q, k, v, m, 0.125), torch.device("cpu"))
    torch.testing.assert_close(step(q, k, v, mask), attend(q, k, v, mask, 0.125), rtol=1e-5, atol=1e-5)
    assert calls == []
