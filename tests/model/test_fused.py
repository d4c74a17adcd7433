"""The fused CPU kernels (llmkit.model.fused) compute what the model's eager formulas compute, rounded where
they round, and the modules take them only at inference."""
import pytest
import torch
import torch.nn.functional as F

from llmkit.config import ModelConfig
from llmkit.model import fused
from llmkit.model.mlp import MLP
from llmkit.model.norm import RMSNorm
from llmkit.model.rope import apply_rope

pytestmark = pytest.mark.skipif(not fused.load(), reason="the fused kernels could not be built here")

DTYPES = [torch.float32, torch.bfloat16]


def ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in units of the last place of b's dtype at b's magnitude."""
    eps = torch.finfo(b.dtype).eps
    return (a.double() - b.double()).abs() / (b.double().abs() * eps).clamp_min(torch.finfo(b.dtype).tiny)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 7, 300])  # one thread, and the threaded split
def test_rms_norm_matches_eager_and_float64(dtype, rows):
    torch.manual_seed(0)
    norm = RMSNorm(96, eps=1e-2).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(96) + 0.5)
    x = (torch.randn(2, rows, 96) * 0.05).to(dtype)  # small values, so eps matters
    with torch.no_grad():
        got = norm(x)
        xf = x.double()
        want64 = norm.weight.double() * xf / (xf.pow(2).mean(-1, keepdim=True) + 1e-2).sqrt()
    eager = norm(x.requires_grad_())  # autograd on: the eager formula
    assert got.dtype == dtype and got.shape == x.shape
    assert torch.equal(got, fused.rms_norm(x.detach(), norm.weight.detach(), 1e-2))  # the module took the kernel
    # rounded twice like eager (after the scaling, after the weight): within 2 units of the last place
    assert ulps(got, want64.to(dtype)).max() <= 2
    assert ulps(got, eager.detach()).max() <= (1 if dtype == torch.bfloat16 else 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_matches_eager(dtype):
    torch.manual_seed(0)
    mlp = MLP(ModelConfig(dim=32, ffn_dim=5000, n_layers=1, n_heads=4, vocab_size=16, activation="silu")).to(dtype)
    x = torch.randn(3, 32, dtype=dtype)
    gate, up = mlp.gate_proj(x).detach(), mlp.up_proj(x).detach()
    got = fused.silu_mul(gate * 8, up)  # large arguments too: the clamped exp
    eager = F.silu(gate * 8) * up
    assert ulps(got, eager).max() <= (1 if dtype == torch.bfloat16 else 3)  # a Cody-Waite exp: ~1 ulp
    with torch.no_grad():
        assert torch.equal(mlp(x), mlp.down_proj(fused.silu_mul(gate, up)))  # the module takes the kernel


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("rotary", [64, 32])  # whole heads, and partial rotary (the rest passes through)
def test_rope_equals_eager_bit_for_bit(dtype, layout, rotary):
    torch.manual_seed(0)
    b, t, h, d = 2, 5, 3, 64
    x = torch.randn(b, t, h, d, dtype=dtype).transpose(1, 2)  # (B, H, T, D), as the attention projections give it
    angles = torch.rand(b, t, rotary) * 6
    cos, sin = angles.cos(), angles.sin()
    got = fused.rope(x, cos, sin, layout == "interleaved")
    with torch.enable_grad():
        eager = apply_rope(x.clone().requires_grad_(), cos, sin, layout).detach()
    assert got.shape == x.shape and torch.equal(got, eager)
    assert not torch.equal(got, fused.rope(x, cos, sin, layout != "interleaved"))  # the layouts differ
    assert torch.equal(apply_rope(x, cos, sin, layout), got)  # apply_rope takes the kernel at inference


def test_rope_reads_any_head_and_position_strides():
    torch.manual_seed(0)
    base = torch.randn(2, 4, 7, 3, 64)
    x = base[:, 1, 2:6].permute(0, 2, 1, 3)  # (B, H, T, D) view with gaps between positions and batches
    angles = torch.rand(2, 4, 64)
    got = fused.rope(x, angles.cos(), angles.sin(), False)
    assert torch.equal(got, fused.rope(x.contiguous(), angles.cos(), angles.sin(), False))


def test_applies_only_at_inference_on_cpu_float():
    w = torch.ones(4, requires_grad=True)
    assert not fused.applies(torch.ones(4), w) and not fused.applies(torch.ones(4))  # grad mode on
    with torch.no_grad():
        assert fused.applies(torch.ones(4), w)
        assert not fused.applies(torch.ones(4, dtype=torch.float16))
        assert not fused.applies(torch.ones(4), torch.ones(4, dtype=torch.bfloat16))  # mixed dtypes


def test_training_gradients_flow_through_the_eager_path():
    norm = RMSNorm(8)
    x = torch.randn(3, 8, requires_grad=True)
    norm(x).sum().backward()
    assert x.grad is not None and norm.weight.grad is not None
