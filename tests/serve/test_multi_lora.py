"""Multi-LoRA serving: one base model, adapters picked by ``model``, listed by /v1/models, batched together."""
from __future__ import annotations

import asyncio
import copy
import time

import httpx
import openai
import pytest

from llmkit.engine import LLM, AsyncLLMEngine, LLMEngine, SamplingParams
from llmkit.peft import load_adapter
from llmkit.serve import ServeConfig
from tests.engine.test_multi_lora import ADAPTERS, make_adapter

from .conftest import MODEL, LiveServer

PROMPT = [11, 42, 7, 99, 150, 23, 5, 61, 200, 14, 88, 3]


@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory) -> dict[str, str]:
    out = {}
    for seed, (name, options) in enumerate(ADAPTERS.items()):
        out[name] = str(tmp_path_factory.mktemp(name))
        make_adapter(tiny, out[name], seed, **options)
    return out


@pytest.fixture(scope="module")
def expected(tiny, tokenizer, adapters) -> dict[str, str]:
    """Greedy text of PROMPT under each served model: the offline engine over the model with that single adapter
    applied the usual way (``load_adapter``; tests/engine checks that against plain generate token for token)."""
    models = {MODEL: tiny, **{name: load_adapter(copy.deepcopy(tiny), d) for name, d in adapters.items()}}
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    return {name: LLM(m, tokenizer=tokenizer, kv_cache_memory="16MiB").generate(PROMPT, params, use_tqdm=False)[0]
            .outputs[0].text for name, m in models.items()}


@pytest.fixture(scope="module")
def lora_server(tiny, tokenizer, adapters):
    def load() -> AsyncLLMEngine:
        return AsyncLLMEngine(LLMEngine(copy.deepcopy(tiny), tokenizer, kv_cache_memory="64MiB",
                                        lora_adapters=adapters))

    live = LiveServer(ServeConfig(MODEL), load).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(lora_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{lora_server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_adapters(client, adapters):
    cards = {c.id: c for c in client.models.list().data}
    assert list(cards) == [MODEL, *adapters]
    for name, directory in adapters.items():
        assert cards[name].parent == MODEL and cards[name].root == directory
    assert getattr(cards[MODEL], "parent", None) is None


def test_each_model_name_gets_its_adapter(client, expected):
    assert len(set(expected.values())) == 3  # the adapters change the output
    for name, want in expected.items():
        out = client.completions.create(model=name, prompt=PROMPT, max_tokens=10, temperature=0,
                                        extra_body={"ignore_eos": True})
        assert out.model == name and out.choices[0].text == want, name


def test_adapters_batch_together(lora_server, expected):
    """Concurrent streams under the base and both adapters: each equals its own reference, and they share steps."""
    engine = lora_server.engine
    steps, mixed = engine.step, []

    def spy():  # record how many distinct adapters each step ran (the engine thread calls this)
        mixed.append(len({seq.lora_name for seq in engine.scheduler.running}))
        return steps()

    async def main():
        client = openai.AsyncOpenAI(base_url=f"{lora_server.url}/v1", api_key="unused", max_retries=0, timeout=60)

        async def one(name: str) -> str:
            stream = await client.completions.create(model=name, prompt=PROMPT, max_tokens=10, temperature=0,
                                                     stream=True, extra_body={"ignore_eos": True})
            return "".join([c.choices[0].text async for c in stream if c.choices])

        return await asyncio.gather(*(one(n) for n in list(expected) * 2))

    engine.step = spy
    try:
        texts = asyncio.run(main())
    finally:
        del engine.step
    assert texts == list(expected.values()) * 2
    assert max(mixed) == 3


def test_chat_with_an_adapter_and_unknown_names(client, lora_server):
    out = client.chat.completions.create(model="qv", messages=[{"role": "user", "content": "Hello"}], max_tokens=4)
    assert out.model == "qv" and out.usage.completion_tokens >= 1
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="qv2", prompt="x")
    assert e.value.body["code"] == "model_not_found" and "'qv'" in e.value.body["message"]
    assert httpx.get(f"{lora_server.url}/health").status_code == 200


def test_bad_adapter_fails_loading_with_its_name(tiny, tokenizer, tmp_path):
    def load() -> AsyncLLMEngine:
        return AsyncLLMEngine(LLMEngine(copy.deepcopy(tiny), tokenizer, kv_cache_memory="16MiB",
                                        lora_adapters={"broken": str(tmp_path)}))

    live = LiveServer(ServeConfig(MODEL), load).start(wait_ready=False)
    try:
        for _ in range(200):
            r = httpx.get(f"{live.url}/health")
            if "broken" in r.text:
                break
            time.sleep(0.05)
        assert r.status_code == 503 and "LoRA adapter 'broken'" in r.json()["error"]["message"]
    finally:
        live.stop()
