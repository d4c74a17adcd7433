"""Tiny random models for the long-context tests (one intra-op thread: the CPU is shared)."""
from __future__ import annotations

import pytest
import torch

from llmkit import CausalLM, ModelConfig

# init_std 0.2 gives O(1) logits, so greedy argmax ties cannot happen by accident
TINY = dict(vocab_size=61, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=256, init_std=0.2)


def tiny_model(**overrides) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(ModelConfig(**{**TINY, **overrides})).eval()


@pytest.fixture
def tiny() -> CausalLM:
    return tiny_model()
