"""A live llmkit server with a tiny random model on 127.0.0.1 for the load generator to hit."""
from __future__ import annotations

import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.engine import AsyncLLMEngine, LLMEngine
from llmkit.serve import ServeConfig, build_app
from llmkit.serve.background import BackgroundServer
from llmkit.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    text = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n" * 30
    return Tokenizer.train([text], vocab_size=300, min_frequency=2)


@pytest.fixture(scope="module")
def server(tokenizer):
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=2, ffn_dim=64,
                                 max_seq_len=512)).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    app = build_app(ServeConfig("tiny"), lambda: AsyncLLMEngine(LLMEngine(model, tokenizer, kv_cache_memory="32MiB")))
    with BackgroundServer(app) as live:
        yield live
    torch.set_num_threads(threads)
