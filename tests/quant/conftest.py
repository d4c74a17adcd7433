"""Fixtures for the quantisation tests: a tiny model whose shapes fit the int4 kernel, calibration ids."""
import pytest
import torch

from llmkit import CausalLM, ModelConfig

# every linear has out_features % 16 == 0 and in_features % 32 == 0, so int4 groups of 32 use the kernel
TINY = ModelConfig(vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=64,
                   init_std=0.1)


@pytest.fixture
def tiny() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(TINY).eval()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def calib() -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (8, 32), generator=torch.Generator().manual_seed(2))
