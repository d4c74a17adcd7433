"""GGUFLinear / GGUFEmbedding: the layer equals its dequantised float twin, and LoRA trains on top of it."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmkit.peft.apply import apply_lora
from llmkit.quant import QuantLinear
from llmkit.quant.gguf_linear import GGUFEmbedding, GGUFLinear
from llmkit.quant.gguf_types import dequantize_blocks
from tests.quant.gguf_blocks import random_blocks


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1"])
def test_from_linear_matches_its_dequantised_weight(qtype):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=True)
    layer = GGUFLinear.from_linear(linear, qtype)
    assert isinstance(layer, QuantLinear) and layer.weight.dtype == torch.uint8 and layer.weight.shape == (48, 2 * {
        "q8_0": 34, "q4_0": 18, "q4_1": 20}[qtype])
    x = torch.randn(16, 64)  # many rows: the fp32 path, exact up to summation order
    torch.testing.assert_close(layer(x), F.linear(x, layer.dequantize(), linear.bias))
    torch.testing.assert_close(layer.to_linear()(x), layer(x))
    # and the weight's quantisation error is at most one 4-bit (or 8-bit) step of its range
    step = linear.weight.abs().max() / (127 if qtype == "q8_0" else 7)
    assert (layer.dequantize() - linear.weight).abs().max() <= step


def test_embedding_gathers_dequantised_rows():
    table = GGUFEmbedding(40, 256, "q6_k")
    table.weight.copy_(random_blocks("q6_k", 40, 256))
    ids = torch.tensor([[3, 0, 39], [7, 7, 1]])
    out = table(ids)
    assert out.shape == (2, 3, 256)
    torch.testing.assert_close(out, dequantize_blocks(table.weight, "q6_k", 256)[ids], rtol=0, atol=0)
    assert table.to(torch.bfloat16)(ids).dtype == torch.bfloat16 and table.weight.dtype == torch.uint8


def test_lora_trains_on_a_frozen_gguf_base():
    torch.manual_seed(0)
    model = nn.Sequential(GGUFLinear.from_linear(nn.Linear(64, 64), "q4_1"), nn.ReLU(),
                          GGUFLinear.from_linear(nn.Linear(64, 32), "q8_0"))
    apply_lora(model, target_modules=["0", "2"], r=4)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    x, target = torch.randn(12, 64), torch.randn(12, 32)
    opt = torch.optim.SGD(trainable, lr=0.05)
    before = F.mse_loss(model(x), target).item()
    for _ in range(20):
        opt.zero_grad()
        F.mse_loss(model(x), target).backward()
        opt.step()
    assert F.mse_loss(model(x), target).item() < 0.9 * before
