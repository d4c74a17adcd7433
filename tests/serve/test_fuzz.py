"""Schemathesis fuzzes every operation of the server's OpenAPI schema, valid and invalid bodies: no input produces a 5xx.

A model with a 64-token context keeps each generated case cheap; examples are
bounded and derandomized so the test is repeatable.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.engine import AsyncLLMEngine, LLMEngine

from .conftest import MODEL, LiveServer

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from llmkit.serve import ServeConfig  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_schema(tokenizer):
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=2, ffn_dim=64,
                                 max_seq_len=64)).eval()
    live = LiveServer(ServeConfig(MODEL, max_queue=8),
                      lambda: AsyncLLMEngine(LLMEngine(model, tokenizer, max_num_seqs=8, kv_cache_memory="8MiB")))
    live.start()
    yield schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    live.stop()


def test_no_server_errors(fuzz_schema):
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health"}
    for op, mode in itertools.product(operations, schemathesis.GenerationMode):  # valid and invalid bodies
        if mode is schemathesis.GenerationMode.NEGATIVE and op.method.upper() == "GET":
            continue  # nothing to break in a request without parameters
        @settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
                  database=None)
        @given(case=op.as_strategy(generation_mode=mode))
        def check(case):
            response = case.call(timeout=60)
            assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}"
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}

        check()
