"""Under load and abuse: concurrent streams match solo runs, metrics add up, disconnects free blocks, overload is 429."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmkit.engine import AsyncLLMEngine, LLMEngine

from .conftest import MODEL, serve

STREAM = {"model": MODEL, "temperature": 0, "stream": True, "ignore_eos": True}


def scrape(url: str) -> dict[str, float]:
    """Sample name (with labels) -> value from /metrics."""
    out = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "le")
            if "le" not in s.labels:
                out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


async def stream_text(client: httpx.AsyncClient, body: dict) -> tuple[str, dict]:
    """The streamed content of a chat request and its usage (include_usage)."""
    text, usage = [], None
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            text += [c["delta"].get("content") or "" for c in chunk["choices"]]
    return "".join(text), usage


@pytest.mark.slow
def test_64_concurrent_streams_equal_solo_and_metrics_add_up(server):
    bodies = [{**STREAM, "messages": [{"role": "user", "content": f"Hello world {i}" + " fox" * (i % 7)}],
               "max_tokens": 3 + i % 6, "stream_options": {"include_usage": True}} for i in range(64)]
    before = scrape(server.url)

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            together = await asyncio.gather(*(stream_text(client, b) for b in bodies))
            alone = [await stream_text(client, b) for b in bodies]
        return together, alone

    together, alone = asyncio.run(main())
    assert [t for t, _ in together] == [t for t, _ in alone]
    assert all(u["completion_tokens"] == b["max_tokens"] for (_, u), b in zip(together, bodies))
    after = scrape(server.url)
    delta = {k: after[k] - before.get(k, 0) for k in after}
    usages = [u for _, u in together + alone]
    assert delta["llmkit:request_success_total{finished_reason=length}"] == 128
    assert delta["llmkit:generation_tokens_total"] == sum(u["completion_tokens"] for u in usages)
    assert delta["llmkit:prompt_tokens_total"] == sum(u["prompt_tokens"] for u in usages)
    for name in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"):
        assert delta[f"llmkit:{name}_count"] == 128
    assert delta["llmkit:inter_token_latency_seconds_count"] == sum(u["completion_tokens"] - 1 for u in usages)
    assert after["llmkit:num_requests_running"] == after["llmkit:num_requests_waiting"] == 0
    assert after["llmkit:prefix_cache_hits_total"] > 0  # the solo runs reuse the concurrent runs' prompts


def test_disconnect_mid_stream_frees_blocks(server):
    engine = server.engine
    free = engine.blocks.num_free_blocks
    body = {**STREAM, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 200}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        assert engine.has_unfinished_requests()
    deadline = time.time() + 20
    while engine.has_unfinished_requests() or engine.blocks.num_free_blocks != free:
        assert time.time() < deadline, "the request kept running after its client left"
        time.sleep(0.05)


def test_overload_is_429_then_serves(tiny, tokenizer):
    live = serve(tiny, tokenizer, max_num_seqs=1, max_queue=1).start()
    try:
        body = {**STREAM, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 60}

        async def main():
            async with httpx.AsyncClient(base_url=live.url, timeout=120) as client:
                async def one():
                    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                        await r.aread()
                        return r.status_code, r.headers.get("retry-after"), r
                return await asyncio.gather(*(one() for _ in range(6)))

        results = asyncio.run(main())
        codes = sorted(code for code, _, _ in results)
        assert codes.count(200) >= 2 and codes.count(429) >= 1 and set(codes) <= {200, 429}
        assert all(ra is not None and int(ra) >= 1 for code, ra, _ in results if code == 429)
        assert all(r.json()["error"]["code"] == "overloaded" for code, _, r in results if code == 429)
        after = httpx.post(f"{live.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=60)
        assert after.status_code == 200 and live.app.state.llmkit.in_flight == 0
        many = httpx.post(f"{live.url}/v1/completions", json={"prompt": ["a", "b", "c"], "max_tokens": 1}, timeout=60)
        assert many.status_code == 400 and many.json()["error"]["param"] == "prompt"  # more prompts than slots
    finally:
        live.stop()


def test_health_503_while_loading_then_200(tiny, tokenizer):
    gate = threading.Event()

    def load():
        gate.wait(30)
        return AsyncLLMEngine(LLMEngine(tiny, tokenizer, kv_cache_memory="16MiB"))

    live = serve(tiny, tokenizer)
    live.app.state.llmkit._load = load
    live.start(wait_ready=False)
    try:
        assert httpx.get(f"{live.url}/health").status_code == 503
        r = httpx.post(f"{live.url}/v1/completions", json={"prompt": "Hi"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        gate.set()
        deadline = time.time() + 30
        while httpx.get(f"{live.url}/health").status_code != 200:
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        live.stop()


def test_api_key(tiny, tokenizer):
    live = serve(tiny, tokenizer, api_key="sekret").start()
    try:
        body = {"prompt": "Hi", "max_tokens": 2}
        r = httpx.post(f"{live.url}/v1/completions", json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{live.url}/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.post(f"{live.url}/v1/completions", json=body, headers={"Authorization": "Bearer sekret"})
        assert ok.status_code == 200
        assert httpx.get(f"{live.url}/health").status_code == 200  # probes need no key
    finally:
        live.stop()


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", b"{not json"),
    ("/v1/completions", b"[1, 2]"),
    ("/v1/completions", b'{"prompt": []}'),
    ("/v1/completions", b'{"prompt": [[]]}'),
    ("/v1/completions", b'{"prompt": [-5, 999999]}'),
    ("/v1/completions", b'{"prompt": ""}'),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 0}'),
    ("/v1/completions", b'{"prompt": "x", "seed": 99999999999999999999999999}'),
    ("/v1/completions", b'{"prompt": "x", "temperature": NaN}'),
    ("/v1/completions", b'{"prompt": "x", "stop": [1, 2]}'),
    ("/v1/completions", b'{"prompt": "x", "echo": true, "logprobs": 1}'),
    ("/v1/chat/completions", b'{"messages": []}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "x"}]}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": 5}]}'),
    ("/v1/chat/completions", b'{"messages": "hello"}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "n": 0}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "stream_options": 3}'),
    ("/v1/nope", b"{}"),
])
def test_malformed_is_4xx_openai_error(server, path, body):
    r = httpx.post(f"{server.url}{path}", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


def test_disconnect_while_waiting_for_a_non_streamed_reply_aborts(server):
    engine = server.engine
    free = engine.blocks.num_free_blocks
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 900, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
    deadline = time.time() + 20
    while engine.has_unfinished_requests() or engine.blocks.num_free_blocks != free:
        assert time.time() < deadline, "the request kept running after its client left"
        time.sleep(0.05)
