"""QAT: fake-quant forward on the real scheme's grid, straight-through gradients, conversion, and its payoff."""
import copy

import pytest
import torch
import torch.nn.functional as F

from llmkit.quant import FakeQuantLinear, Int4Linear, convert_qat, prepare_qat, quantize
from llmkit.quant.primitives import fake_quantize


def test_fake_quant_forward_and_straight_through_gradient():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    fq = FakeQuantLinear.from_linear(lin, bits=4, group_size=32)
    assert fq.weight is lin.weight  # shared: an optimiser built before still updates it
    x = torch.randn(5, 64)
    w_q = fake_quantize(lin.weight.detach(), 4, symmetric=False, group_size=32)
    y = fq(x)
    torch.testing.assert_close(y, F.linear(x, w_q, lin.bias))
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(lin.weight.grad, g.T @ x)  # rounding treated as the identity


@pytest.mark.parametrize("scheme, options", [("int8", {}), ("int4", {"group_size": 32})])
def test_convert_reproduces_the_trained_forward(scheme, options, tiny, ids):
    model = prepare_qat(tiny, scheme, **options)
    assert sum(isinstance(m, FakeQuantLinear) for m in model.modules()) == 14
    assert set(model.state_dict()) == set(copy.deepcopy(model).state_dict())
    with torch.no_grad():
        fake = model(ids)
    real = convert_qat(model)
    assert not any(isinstance(m, FakeQuantLinear) for m in real.modules())
    assert real.quantization_config["quant_method"] == scheme
    torch.testing.assert_close(real(ids), fake, atol=2e-4, rtol=1e-4)


@pytest.mark.slow  # 90 training steps of the tiny model
def test_qat_int4_beats_round_to_nearest_after_training(tiny):
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 96, (16, 24), generator=g)

    def loss(m):
        logits = m(data[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), data[:, 1:].reshape(-1))

    def train(m, steps):
        opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
        m.train()
        for _ in range(steps):
            opt.zero_grad()
            loss(m).backward()
            opt.step()
        return m.eval()

    trained = train(tiny, 60)
    qat_model = convert_qat(train(prepare_qat(copy.deepcopy(trained), "int4", group_size=32), 30))
    with torch.no_grad():
        rtn = loss(quantize(copy.deepcopy(trained), "int4", group_size=32)).item()
        qat = loss(qat_model).item()
    assert qat < rtn
    assert isinstance(trained.model.layers[0].mlp.up_proj, torch.nn.Linear)


def test_bad_qat_scheme():
    with pytest.raises(ValueError, match="QAT supports int8, int4"):
        prepare_qat(torch.nn.Sequential(torch.nn.Linear(4, 4)), "gptq")
    with pytest.raises(ValueError, match="not prepared for QAT"):
        convert_qat(torch.nn.Sequential(torch.nn.Linear(4, 4)))
