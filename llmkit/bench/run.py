"""The load loop: for each concurrency, ``num_requests`` requests through that many concurrent clients.

A level gets at least as many requests as its concurrency: with fewer, it would never reach
the load it is labelled with.

Requests are llmperf's workload (:mod:`llmkit.bench.workload`): the same
lengths at every concurrency, so the runs differ only in load, but other lines
of text, so no run is served from the prompt caches of the one before. Each run is bounded in
time: after ``max_seconds`` no new request starts (those running finish or
time out after ``timeout_s``). A tqdm bar counts finished requests.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm.auto import tqdm

from llmkit.bench import report
from llmkit.bench.client import timed_request
from llmkit.bench.workload import RequestSpec, estimate_tokens, make_requests


@dataclass(frozen=True)
class BenchConfig:
    url: str  # the API base, e.g. http://127.0.0.1:8000/v1
    model: str | None = None  # None = the first model the endpoint lists
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    num_requests: int = 64  # per concurrency (at least the concurrency)
    input_tokens: tuple[float, float] = (550, 150)  # mean, std
    output_tokens: tuple[float, float] = (150, 10)
    stream: bool = True
    api_key: str | None = None
    timeout_s: float = 600  # per request
    max_seconds: float = 600  # per concurrency: no request starts after this
    ignore_eos: bool = False  # send ignore_eos (llmkit, vLLM, llama.cpp) so outputs reach max_tokens
    seed: int = 0


async def _run_one(client: httpx.AsyncClient, cfg: BenchConfig, model: str, specs: list[RequestSpec],
                   concurrency: int, count: Callable[[str], int] | None) -> tuple[list[dict[str, Any]], float]:
    queue: asyncio.Queue = asyncio.Queue()
    for spec in specs:
        queue.put_nowait(spec)
    records: list[dict[str, Any]] = []
    extra = {"ignore_eos": True} if cfg.ignore_eos else None
    start = time.perf_counter()
    bar = tqdm(total=len(specs), desc=f"concurrency {concurrency}", unit="req")

    async def worker() -> None:
        while not queue.empty() and time.perf_counter() - start < cfg.max_seconds:
            spec = queue.get_nowait()
            record = await timed_request(client, model, spec, stream=cfg.stream, extra=extra, count=count)
            record["concurrency"] = concurrency
            records.append(record)
            bar.update(1)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    bar.close()
    return records, time.perf_counter() - start


async def _model(client: httpx.AsyncClient, model: str | None) -> str:
    if model is not None:
        return model
    r = await client.get("models")
    r.raise_for_status()
    return r.json()["data"][0]["id"]


def run_bench(cfg: BenchConfig, out_dir: str | Path | None = None,
              count: Callable[[str], int] | None = None) -> dict[str, Any]:
    """Run every concurrency; write the report files to ``out_dir`` (if given); the summary.

    Args:
        cfg: what to run.
        out_dir: where ``summary.json``, ``individual_responses.json`` and the PNGs go.
        count: the served model's token counter (e.g. ``lambda s: len(tok.encode(s))``); None = estimate
            prompt lengths from words and take output lengths from the server's ``usage``.
    """
    async def main() -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        limits = httpx.Limits(max_connections=max(cfg.concurrency) + 4)
        async with httpx.AsyncClient(base_url=cfg.url.rstrip("/") + "/", headers=headers, limits=limits,
                                     timeout=httpx.Timeout(cfg.timeout_s, connect=10)) as client:
            model = await _model(client, cfg.model)
            runs, records = [], []
            for i, c in enumerate(cfg.concurrency):
                specs = make_requests(max(cfg.num_requests, c), cfg.input_tokens, cfg.output_tokens, cfg.seed,
                                      count or estimate_tokens, variant=i)
                recs, duration = await _run_one(client, cfg, model, specs, c, count)
                runs.append(report.summarize(recs, duration, c))
                records += recs
        meta = {"url": cfg.url, "model": model, "stream": cfg.stream, "num_requests": cfg.num_requests,
                "input_tokens": list(cfg.input_tokens), "output_tokens": list(cfg.output_tokens)}
        if out_dir is not None:
            report.write(Path(out_dir), meta, runs, records)
        return {**meta, "runs": runs}

    return asyncio.run(main())
