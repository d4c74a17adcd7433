"""Shared helpers for the PEFT tests: a tiny model and a way to make adapters non-trivial."""
import pytest
import torch

from llmkit import CausalLM, ModelConfig

TINY = ModelConfig(vocab_size=96, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=64)


@pytest.fixture
def tiny() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(TINY.replace(init_std=0.2)).eval()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))


def perturb_trainable(model: torch.nn.Module, scale: float = 0.1, seed: int = 2) -> None:
    """Add noise to every trainable parameter, so adapters stop being the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))


@pytest.fixture
def perturb():
    return perturb_trainable
