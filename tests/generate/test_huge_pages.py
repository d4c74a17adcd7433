"""Weights moved onto huge pages keep their values, their Parameters and their ties; the mapping asks for huge pages."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.generate import huge_pages
from llmkit.generate.huge_pages import huge_pages_available, move_to_huge_pages

needs_thp = pytest.mark.skipif(not huge_pages_available(), reason="the kernel gives no transparent huge pages")


def vm_flags(address: int) -> list[str]:
    """The VmFlags of this process's mapping that holds ``address`` (``hg``: MADV_HUGEPAGE was asked)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "VmFlags:":
            return line.split()[1:]
    raise LookupError(f"no mapping holds {address:#x}")


def tiny_model() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(ModelConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
                                max_seq_len=64, tie_word_embeddings=True)).eval()


@needs_thp
def test_move_keeps_values_parameters_and_ties():
    model = tiny_model()
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        before = model(ids)[0]
    params = dict(model.named_parameters(remove_duplicate=False))
    values = {n: p.detach().clone() for n, p in params.items()}
    ptrs = {n: p.data_ptr() for n, p in params.items()}
    moved = move_to_huge_pages(model)
    assert moved >= sum(p.numel() * p.element_size() for p in model.parameters())
    after_params = dict(model.named_parameters(remove_duplicate=False))
    for name, p in after_params.items():
        assert p is params[name] and p.data_ptr() != ptrs[name], name  # the same Parameter, new memory
        assert torch.equal(p, values[name]), name
        assert p.data_ptr() % 64 == 0 and "hg" in vm_flags(p.data_ptr()), name
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied: one Parameter, moved once
    with torch.no_grad():
        assert torch.equal(model(ids)[0], before)


@needs_thp
def test_views_stay():
    flat = torch.zeros(100)
    layer = torch.nn.Linear(10, 5)
    layer.weight = torch.nn.Parameter(flat[:50].view(5, 10))  # shares storage with `flat`: must not move
    ptr = layer.weight.data_ptr()
    move_to_huge_pages(layer)
    assert layer.weight.data_ptr() == ptr and "hg" in vm_flags(layer.bias.data_ptr())


def test_unavailable_thp_moves_nothing(monkeypatch, tmp_path):
    never = tmp_path / "enabled"
    never.write_text("always madvise [never]\n")
    monkeypatch.setattr(huge_pages, "THP_MODE", never)
    model = tiny_model()
    ptrs = [p.data_ptr() for p in model.parameters()]
    assert move_to_huge_pages(model) == 0 and [p.data_ptr() for p in model.parameters()] == ptrs
