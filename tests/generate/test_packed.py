"""PackedLinear: F.linear on oneDNN-prepacked weights while active, never on stale ones."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmkit.generate.packed import PackedLinear, packable

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def count_packed_calls(monkeypatch) -> list[int]:
    calls = []
    real = torch.ops.mkldnn._linear_pointwise

    class Spy:
        def __call__(self, *args):
            calls.append(1)
            return real(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", Spy())
    return calls


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("rows", [1, 3, 17, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_equals_f_linear(dtype, tol, rows, bias):
    torch.manual_seed(0)
    layer = nn.Linear(40, 24, bias=bias).to(dtype)
    x = torch.randn(2, rows, 40, dtype=dtype)
    want = F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
    with torch.no_grad(), PackedLinear(layer):
        got = layer(x)
    assert got.dtype == dtype and got.shape == (2, rows, 24)
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


def test_routes_packed_weights_only(monkeypatch):
    layer, other = nn.Linear(16, 8), nn.Linear(16, 8)
    mode = PackedLinear(layer)
    calls = count_packed_calls(monkeypatch)
    x = torch.randn(4, 16)
    with torch.no_grad(), mode:
        layer(x)
        assert len(calls) == 1
        other(x)  # not packed: plain F.linear
        F.linear(x.double(), layer.weight.double())  # another dtype: a different tensor altogether
    assert len(calls) == 1
    layer(x)  # inactive
    assert len(calls) == 1


def test_tied_weight_packed_once():
    emb = nn.Embedding(32, 16)
    head = nn.Linear(16, 32, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head, "other": nn.Linear(16, 16)})
    assert len(PackedLinear(model).packs) == 2


def test_repacks_a_weight_changed_in_place():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8, bias=False)
    mode = PackedLinear(layer)
    x = torch.randn(3, 16)
    with torch.no_grad():
        layer.weight.mul_(2)  # e.g. a merged LoRA delta
        with mode:
            got = layer(x)
    torch.testing.assert_close(got, F.linear(x, layer.weight.detach()))


def test_replaced_weight_is_not_read_from_the_old_pack():
    layer = nn.Linear(16, 8, bias=False)
    mode = PackedLinear(layer)
    layer.weight = nn.Parameter(torch.randn(8, 16))
    x = torch.randn(3, 16)
    with torch.no_grad(), mode:
        got = layer(x)
    torch.testing.assert_close(got, F.linear(x, layer.weight.detach()))


def test_gradients_bypass_the_pack(monkeypatch):
    layer = nn.Linear(16, 8)
    mode = PackedLinear(layer)
    calls = count_packed_calls(monkeypatch)
    with mode:
        layer(torch.randn(3, 16)).sum().backward()
    assert calls == [] and layer.weight.grad is not None


def test_packable():
    assert packable(torch.randn(4, 4)) and packable(torch.randn(4, 4, dtype=torch.bfloat16))
    assert not packable(torch.randn(4, 4, dtype=torch.float16)) and not packable(torch.randn(4))


def test_engine_eager_steps_use_the_pack(monkeypatch, tiny):
    from llmkit.engine.model_runner import Feed, ModelRunner

    model = tiny
    runner = ModelRunner(model, num_blocks=8, block_size=4)
    plain = ModelRunner(model, num_blocks=8, block_size=4, prepack=False)
    calls = count_packed_calls(monkeypatch)
    feed = Feed(table=[0, 1], start=0, tokens=[5, 6, 7], wanted=1)
    got = runner.run([feed])[0]
    assert len(calls) > 0
    n = len(calls)
    want = plain.run([feed._replace(table=[2, 3])])[0]
    assert len(calls) == n
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
