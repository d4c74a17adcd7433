"""MultiLoRALinear: per token, the single-adapter LoRALinear of that token's adapter (or the base).

Equal to rounding where adapters are stacked: the stack pads ranks, and on some BLAS builds a padded
product sums in another order (bitwise equal on one host, 1 ulp off on another)."""
import pytest
import torch
from torch import nn

from llmkit.peft import LoRALinear
from llmkit.peft.multi_lora import LoRAMapping, MultiLoRALinear


def lora(base: nn.Linear, r: int, alpha: float, seed: int, rslora: bool = False) -> LoRALinear:
    layer = LoRALinear(base, r=r, alpha=alpha, use_rslora=rslora)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g))
    return layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_token_gets_its_own_adapter(dtype):
    torch.manual_seed(0)
    base = nn.Linear(24, 40, bias=True).to(dtype)
    singles = [lora(base, 4, 8, 1), lora(base, 8, 4, 2, rslora=True)]  # different ranks: the stack pads
    mapping = LoRAMapping()
    multi = MultiLoRALinear(base, mapping)
    for slot, s in enumerate(singles):
        multi.set_slot(slot, s.lora_A.weight, s.lora_B.weight, s.scaling)
    x = torch.randn(1, 7, 24).to(dtype)
    slots = [0, -1, 1, 1, 0, -1, 1]
    with torch.no_grad(), mapping.use(slots, "cpu"):
        got = multi(x)
    with torch.no_grad():
        want = {-1: base(x), 0: singles[0](x), 1: singles[1](x)}
    for t, slot in enumerate(slots):
        torch.testing.assert_close(got[0, t], want[slot][0, t], msg=f"token {t}, slot {slot}")
    with torch.no_grad():  # outside a mapping, or for a slot this layer lacks, it is the base layer
        assert torch.equal(multi(x), base(x))
        with mapping.use([2] * 7, "cpu"):
            assert torch.equal(multi(x), base(x))


def test_one_adapter_equals_lora_linear():
    torch.manual_seed(1)
    base = nn.Linear(16, 16, bias=False)
    single = lora(base, 2, 4, 3)
    mapping = LoRAMapping()
    multi = MultiLoRALinear(base, mapping)
    multi.set_slot(0, single.lora_A.weight, single.lora_B.weight, single.scaling)
    x = torch.randn(2, 5, 16)
    with torch.no_grad(), mapping.use([0] * 10, "cpu"):
        assert torch.equal(multi(x), single(x))
    with mapping.use([0] * 3, "cpu"), pytest.raises(RuntimeError, match="covers 3 tokens"):
        multi(x)
