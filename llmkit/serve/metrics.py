"""Prometheus metrics of the server, named as vLLM names its own (prefix ``llmkit:``).

Counters and histograms are updated as requests stream (:meth:`Metrics.track`
follows one engine request); the gauges and the prefix-cache counters are read
from the engine's ``stats()`` at scrape time by a custom collector, so they are
never stale. Each app has its own registry, so several servers (tests) can live
in one process.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from llmkit.engine.outputs import RequestOutput

_LATENCY = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0,
            80.0, 160.0)


class _EngineCollector:
    """The engine's current state, read when /metrics is scraped."""

    def __init__(self, stats: Callable[[], dict[str, float] | None]):
        self.stats = stats

    def collect(self):
        s = self.stats()
        if s is None:  # still loading
            return
        yield GaugeMetricFamily("llmkit:num_requests_running", "Sequences in the running batch.",
                                value=s["num_running"])
        yield GaugeMetricFamily("llmkit:num_requests_waiting", "Sequences waiting to be scheduled.",
                                value=s["num_waiting"])
        yield GaugeMetricFamily("llmkit:kv_cache_usage_perc", "Share of KV-cache blocks in use (0-1).",
                                value=s["kv_cache_usage"])
        yield CounterMetricFamily("llmkit:prefix_cache_queries", "Prompt blocks looked up in the prefix cache.",
                                  value=s["prefix_cache_queries"])
        yield CounterMetricFamily("llmkit:prefix_cache_hits", "Prompt blocks found in the prefix cache.",
                                  value=s["prefix_cache_hits"])


class Metrics:
    """The server's registry and instruments."""

    def __init__(self, stats: Callable[[], dict[str, float] | None]):
        r = self.registry = CollectorRegistry()
        self.prompt_tokens = Counter("llmkit:prompt_tokens", "Prefilled prompt tokens.", registry=r)
        self.generation_tokens = Counter("llmkit:generation_tokens", "Generated tokens.", registry=r)
        self.success = Counter("llmkit:request_success", "Finished sequences by finish reason.",
                               ["finished_reason"], registry=r)
        self.ttft = Histogram("llmkit:time_to_first_token_seconds", "Arrival to first token.", buckets=_LATENCY,
                              registry=r)
        self.itl = Histogram("llmkit:inter_token_latency_seconds", "Time between generated tokens.",
                             buckets=_LATENCY, registry=r)
        self.e2e = Histogram("llmkit:e2e_request_latency_seconds", "Arrival to last token.", buckets=_LATENCY,
                             registry=r)
        self.queue = Histogram("llmkit:request_queue_time_seconds", "Arrival to first scheduled step.",
                               buckets=_LATENCY, registry=r)
        r.register(_EngineCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def track(self) -> Callable[[RequestOutput], None]:
        """A callback to give each streamed delta of one engine request, in order."""
        last: list[float] = []

        def observe(delta: RequestOutput) -> None:
            now = time.time()
            new = max((len(o.token_ids) for o in delta.outputs), default=0)
            self.generation_tokens.inc(sum(len(o.token_ids) for o in delta.outputs))
            if new and not last:
                self.prompt_tokens.inc(len(delta.prompt_token_ids))
                if delta.metrics.ttft is not None:
                    self.ttft.observe(delta.metrics.ttft)
            elif new:  # the gap since the previous delta, shared by the tokens it brought
                for _ in range(new):
                    self.itl.observe((now - last[0]) / new)
            if new:
                last[:] = [now]
            if delta.finished:
                m = delta.metrics
                if m.queue_time is not None:
                    self.queue.observe(m.queue_time)
                self.e2e.observe((m.finished_time or now) - m.arrival_time)
                for o in delta.outputs:
                    if o.finish_reason not in (None, "abort"):
                        self.success.labels(o.finish_reason).inc()

        return observe
