"""Each calibrated or mixed-precision algorithm's defining property."""
import torch
import torch.nn.functional as F
from torch import nn

from llmkit.quant import LLMInt8Linear, W8A8Linear
from llmkit.quant.awq import search_scale
from llmkit.quant.gptq import gptq_quantize, hessian
from llmkit.quant.primitives import dequantize_affine, fake_quantize
from llmkit.quant.smoothquant import smoothing_factors


def _inputs(n=512, k=128, seed=0):
    """Correlated activations with a few large channels, like a transformer's."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k)
    x = torch.randn(n, k, generator=g) @ mix
    x[:, :4] *= 20  # outlier channels
    return x


def _weight(out=64, k=128, seed=1):
    return torch.randn(out, k, generator=torch.Generator().manual_seed(seed)) * 0.05


def _out_err(x, w, w_hat):
    return (x @ (w - w_hat).T).pow(2).mean().item()


def test_llm_int8_is_exact_on_the_outlier_columns():
    lin = nn.Linear(128, 64)
    q = LLMInt8Linear.from_linear(lin, threshold=6.0)
    x = torch.randn(5, 128) * 0.5
    x[:, 7] = 0
    x[2, 7] = 40.0  # one token's value makes column 7 an outlier column for every token
    only_outliers = torch.zeros_like(x)
    only_outliers[:, 7] = x[:, 7]
    w_hat = q.dequantize()
    # the outlier column alone is a float product: equal to the matmul with the stored weight
    torch.testing.assert_close(q(only_outliers), F.linear(only_outliers, w_hat, lin.bias), atol=1e-6, rtol=1e-6)
    # and it adds exactly its float product on top of the int8 part of the other columns
    inliers = x.clone()
    inliers[:, 7] = 0
    torch.testing.assert_close(q(x) - q(inliers), F.linear(only_outliers, w_hat), atol=1e-5, rtol=1e-5)
    # without the decomposition, the outlier's per-token scale crushes the rest of its row
    ref = F.linear(x, lin.weight, lin.bias)
    w8a8 = W8A8Linear.from_linear(lin)
    assert (q(x) - ref)[2].abs().max() < 0.2 * (w8a8(x) - ref)[2].abs().max()


def test_smoothquant_migration_leaves_the_float_output_unchanged():
    x, w = _inputs(), _weight()
    s = smoothing_factors(x.abs().amax(dim=0), w, alpha=0.5)
    torch.testing.assert_close((x / s) @ (w * s).T, x @ w.T, atol=1e-4, rtol=1e-4)
    # and it balances the ranges: max|X_j / s_j| = max|W_j * s_j| = sqrt(max|X_j| max|W_j|)
    torch.testing.assert_close((x / s).abs().amax(dim=0), (w * s).abs().amax(dim=0), rtol=1e-4, atol=1e-6)


def test_smoothquant_w8a8_beats_plain_w8a8_with_outlier_channels():
    x = _inputs()
    lin = nn.Linear(128, 64, bias=False)
    lin.weight.data = _weight()
    s = smoothing_factors(x.abs().amax(dim=0), lin.weight)
    ref = lin(x)
    smooth_err = (W8A8Linear.from_linear(lin, smooth=s)(x) - ref).pow(2).mean()
    plain_err = (W8A8Linear.from_linear(lin)(x) - ref).pow(2).mean()
    assert smooth_err < plain_err


def _gptq_err(x, w, **kw):
    codes, scale, zero = gptq_quantize(w, hessian(x), bits=4, group_size=32, **kw)
    return _out_err(x, w, dequantize_affine(codes, scale, zero, 32))


def test_gptq_layer_error_is_below_round_to_nearest():
    x, w = _inputs(), _weight()
    rtn = _out_err(x, w, fake_quantize(w, 4, symmetric=False, group_size=32))
    assert _gptq_err(x, w) < 0.8 * rtn
    assert _gptq_err(x, w, act_order=True) < 0.8 * rtn
    assert _gptq_err(x, w, block_size=16) < 0.8 * rtn  # lazy batches change the order of updates, not the result
    torch.testing.assert_close(torch.tensor(_gptq_err(x, w, block_size=16)), torch.tensor(_gptq_err(x, w)),
                               rtol=1e-3, atol=0)


def test_gptq_codes_fit_the_bits_and_dead_inputs_are_zero():
    x, w = _inputs(), _weight()
    x[:, 10] = 0  # an input that never fires
    codes, scale, zero = gptq_quantize(w, hessian(x), bits=3, group_size=32)
    assert codes.max() <= 7
    assert dequantize_affine(codes, scale, zero, 32)[:, 10].abs().max() < scale.max()


def test_awq_search_never_increases_the_error_over_s_equal_1():
    for seed in range(3):
        x, w = _inputs(n=256, seed=seed), _weight(seed=seed + 10)  # 256 rows: all of them are searched on
        s, errors = search_scale(w, x, group_size=32)
        assert len(errors) == 20
        chosen = _out_err(x, w, fake_quantize(w * s, 4, False, 32) / s)
        plain = _out_err(x, w, fake_quantize(w, 4, False, 32))
        assert abs(errors[0] - plain) <= 1e-6 * plain + 1e-12  # candidate 0 is s = 1
        assert chosen <= plain * (1 + 1e-5) and min(errors) <= errors[0]
