"""Fixtures for server tests: a tiny random model behind a live uvicorn on 127.0.0.1 (random free port)."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.engine import AsyncLLMEngine, LLMEngine
from llmkit.serve import ServeConfig, build_app
from llmkit.serve.background import BackgroundServer
from llmkit.tokenizer import Tokenizer

MODEL = "tiny"


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    text = ("Hello world. The quick brown fox jumps over the lazy dog. END of story.\n" * 20
            + "Emoji 🤗 and café, naïve, 日本語.\n" * 5)
    return Tokenizer.train([text], vocab_size=300, min_frequency=2)


@pytest.fixture(scope="session")
def tiny(tokenizer) -> CausalLM:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96,
                      max_seq_len=1024, init_std=0.2)
    return CausalLM(cfg).eval()


class LiveServer(BackgroundServer):
    """A :class:`BackgroundServer` that knows its app's engine."""

    def __init__(self, config: ServeConfig, load: Callable[[], AsyncLLMEngine]):
        super().__init__(build_app(config, load))

    @property
    def engine(self) -> LLMEngine:
        return self.app.state.llmkit.engine.engine


def serve(tiny, tokenizer, *, max_num_seqs: int = 64, **config) -> LiveServer:
    def load() -> AsyncLLMEngine:
        return AsyncLLMEngine(LLMEngine(tiny, tokenizer, max_num_seqs=max_num_seqs, kv_cache_memory="64MiB"))

    return LiveServer(ServeConfig(MODEL, **config), load)


@pytest.fixture(scope="module")
def server(tiny, tokenizer) -> Iterator[LiveServer]:
    live = serve(tiny, tokenizer).start()
    yield live
    live.stop()
