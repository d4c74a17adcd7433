"""One timed request to an OpenAI-compatible chat endpoint, measured as llmperf measures it, minus its errors.

Time to first token is the arrival of the first chunk that carries content;
end-to-end latency is the arrival of the stream's end. Output tokens are the
server's ``usage.completion_tokens`` (asked for with
``stream_options.include_usage``), else the served model's tokenizer count of
the text, else the number of content chunks. Inter-token latency is
``(e2e - ttft) / (output tokens - 1)``: the decode time shared by the tokens
after the first (llmperf's own includes TTFT and divides by SSE chunks, which
several tokens may share).

A request whose connection drops before any response arrives is sent once more on a new
connection, as the ``openai`` client does: keep-alive servers close idle pooled connections
(llama.cpp's server closes one after a streamed response, without a ``Connection: close``
header), and the next request sent on such a connection fails though the server never saw it.
That failure is the client's, not the server's, so it must not count as the server's error.
The retry's time counts from the first attempt.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from llmkit.bench.workload import RequestSpec

TRANSPORT_ERROR = -1  # error_code of a request that got no HTTP response (refused, reset, timed out)
# a dropped connection; before any response, the symptom of a stale pooled keep-alive connection
_DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class _Failed(Exception):
    """A request that failed: its ``error_code`` and message."""


class _Stale(Exception):
    """The connection dropped before any response arrived."""


async def timed_request(client: httpx.AsyncClient, model: str, spec: RequestSpec, *, stream: bool = True,
                        extra: dict[str, Any] | None = None, count: Callable[[str], int] | None = None
                        ) -> dict[str, Any]:
    """Send one chat request; its llmperf record (``error_code`` None on success)."""
    body = {"model": model, "messages": [{"role": "user", "content": spec.prompt}], "max_tokens": spec.max_tokens,
            "stream": stream, **(extra or {})}
    if stream:
        body["stream_options"] = {"include_usage": True}
    record: dict[str, Any] = {"error_code": None, "error_msg": "", "ttft_s": None, "inter_token_latency_s": None,
                              "end_to_end_latency_s": None, "request_output_throughput_token_per_s": None,
                              "number_input_tokens": spec.input_tokens, "number_output_tokens": 0}
    start = time.perf_counter()
    try:
        try:
            content, chunks, usage, ttft = await _attempt(client, body, stream, start)
        except _Stale:
            content, chunks, usage, ttft = await _attempt(client, body, stream, start)
    except _Failed as e:
        code, message = e.args
        record.update(error_code=code, error_msg=message[:500])
        return record
    except _Stale as e:
        cause = e.__cause__
        record.update(error_code=TRANSPORT_ERROR, error_msg=f"{type(cause).__name__}: {cause}"[:500])
        return record
    e2e = time.perf_counter() - start
    if usage and usage.get("completion_tokens") is not None:
        n_out = usage["completion_tokens"]
        record["number_input_tokens"] = usage.get("prompt_tokens", spec.input_tokens)
    else:
        n_out = count(content) if count is not None else chunks
    record.update(end_to_end_latency_s=e2e, number_output_tokens=n_out,
                  request_output_throughput_token_per_s=n_out / e2e if e2e > 0 else None)
    if stream and ttft is not None:
        record["ttft_s"] = ttft
        if n_out > 1:
            record["inter_token_latency_s"] = (e2e - ttft) / (n_out - 1)
    return record


async def _attempt(client: httpx.AsyncClient, body: dict[str, Any], stream: bool, start: float
                   ) -> tuple[str, int, dict[str, Any] | None, float | None]:
    """One try of the request: (content, content chunks, usage, ttft).

    Raises:
        _Stale: the connection dropped before any response arrived.
        _Failed: any other failure.
    """
    text, chunks, usage, ttft, answered = [], 0, None, None, False
    try:
        if stream:
            async with client.stream("POST", "chat/completions", json=body) as r:
                answered = True
                if r.status_code != 200:
                    await r.aread()
                    raise _Failed(r.status_code, r.text)
                async for line in r.aiter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    if "error" in chunk:
                        raise _Failed(chunk["error"].get("code") or 500, chunk["error"].get("message", ""))
                    usage = chunk.get("usage") or usage
                    piece = "".join((c.get("delta") or {}).get("content") or "" for c in chunk.get("choices") or [])
                    if piece:
                        ttft = ttft if ttft is not None else time.perf_counter() - start
                        chunks += 1
                        text.append(piece)
        else:
            r = await client.post("chat/completions", json=body)
            answered = True
            if r.status_code != 200:
                raise _Failed(r.status_code, r.text)
            data = r.json()
            usage = data.get("usage")
            text.append(data["choices"][0]["message"].get("content") or "")
            chunks = 1
    except _DROPPED as e:
        if not answered:
            raise _Stale() from e
        raise _Failed(TRANSPORT_ERROR, f"{type(e).__name__}: {e}") from e
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as e:
        raise _Failed(TRANSPORT_ERROR, f"{type(e).__name__}: {e}") from e
    return "".join(text), chunks, usage, ttft
