"""Fixtures for server tests: a tiny random model behind a live uvicorn on 127.0.0.1 (random free port)."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import torch
import uvicorn

from llmkit import CausalLM, ModelConfig
from llmkit.engine import AsyncLLMEngine, LLMEngine
from llmkit.serve import ServeConfig, build_app
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
                      max_seq_len=256, init_std=0.2)
    return CausalLM(cfg).eval()


class LiveServer:
    """``build_app`` under uvicorn in a thread; ``url`` once it listens."""

    def __init__(self, config: ServeConfig, load: Callable[[], AsyncLLMEngine]):
        self.app = build_app(config, load)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, wait_ready: bool = True, timeout: float = 60) -> LiveServer:
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        while wait_ready and httpx.get(f"{self.url}/health").status_code != 200:
            assert time.time() < deadline, "the model did not load"
            time.sleep(0.05)
        return self

    @property
    def engine(self) -> LLMEngine:
        return self.app.state.llmkit.engine.engine

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def serve(tiny, tokenizer, *, max_num_seqs: int = 64, **config) -> LiveServer:
    def load() -> AsyncLLMEngine:
        return AsyncLLMEngine(LLMEngine(tiny, tokenizer, max_num_seqs=max_num_seqs, kv_cache_memory="64MiB"))

    return LiveServer(ServeConfig(MODEL, **config), load)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(tiny, tokenizer) -> Iterator[LiveServer]:
    live = serve(tiny, tokenizer).start()
    yield live
    live.stop()
