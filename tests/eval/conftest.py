"""Fixtures for the eval tests: one tiny random Llama checkpoint (HF layout + a small BPE tokenizer)
that both llmkit and transformers load, and a one-thread torch so small forwards stay fast on a shared CPU."""
from __future__ import annotations

import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.tokenizer import Tokenizer

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be "
        "in want of a wife. However little known the feelings or views of such a man may be on his first "
        "entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families.\n")
CONTEXT = 64


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    """A byte-level BPE of 300 ids (EOS = <|endoftext|>, no BOS)."""
    return Tokenizer.train([TEXT * 20], vocab_size=300, min_frequency=2)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tokenizer):
    """An HF directory with a random CausalLM (context 64) and the tokenizer: what ``--model`` points at."""
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=tokenizer.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                 ffn_dim=96, max_seq_len=CONTEXT, init_std=0.2))
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny(checkpoint):
    """(model, tokenizer) loaded from :func:`checkpoint` by llmkit."""
    from llmkit.generate import load_model_and_tokenizer

    return load_model_and_tokenizer(checkpoint)
