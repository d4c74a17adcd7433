"""``llmkit bench`` against a live tiny server on loopback: workload lengths, the fixed ITL, the files it writes."""
from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest

from llmkit.bench import BenchConfig, run_bench
from llmkit.bench.report import METRICS, QUANTILES, quantile
from llmkit.bench.workload import make_requests, parse_length
from llmkit.cli import main


def test_workload_lengths_follow_the_distribution(tokenizer):
    count = lambda s: len(tokenizer.encode(s, add_special_tokens=False))  # noqa: E731
    specs = make_requests(200, (120, 30), (40, 5), seed=1, count=count)
    ins = np.array([s.input_tokens for s in specs])
    outs = np.array([s.max_tokens for s in specs])
    assert abs(ins.mean() - 120) < 8 and 20 < ins.std() < 40 and abs(outs.mean() - 40) < 2
    for s in specs[:20]:  # the counted length is the prompt's real length, within a token of a line cut
        assert abs(count(s.prompt) - s.input_tokens) <= 3
    fixed = make_requests(5, (150, 0), (7, 0), count=count)  # the instruction alone is ~80 tokens here
    assert all(s.max_tokens == 7 and 140 <= s.input_tokens <= 150 for s in fixed)


def test_workload_variants_keep_the_lengths_and_change_the_text(tokenizer):
    """Each concurrency gets other prompts of the same lengths, so no run is served from an earlier run's cache."""
    count = lambda s: len(tokenizer.encode(s, add_special_tokens=False))  # noqa: E731
    a, b = (make_requests(20, (120, 30), (40, 5), seed=3, count=count, variant=v) for v in (0, 1))
    assert [s.max_tokens for s in a] == [s.max_tokens for s in b]
    assert all(abs(x.input_tokens - y.input_tokens) <= 8 for x, y in zip(a, b))  # both cut a line at the length
    padded = [(x, y) for x, y in zip(a, b) if x.input_tokens > 100]  # the instruction alone is ~80 tokens
    assert len(padded) > 10 and all(x.prompt != y.prompt for x, y in padded)
    assert [s.prompt for s in a] == [s.prompt for s in make_requests(20, (120, 30), (40, 5), seed=3, count=count)]


@pytest.mark.parametrize("spec,expect", [("550:150", (550, 150)), ("100", (100, 0))])
def test_parse_length(spec, expect):
    assert parse_length(spec, "x") == expect


@pytest.mark.parametrize("spec", ["", "a:b", "0", "5:-1", "1:2:3"])
def test_parse_length_rejects(spec):
    with pytest.raises(ValueError, match="--input_tokens"):
        parse_length(spec, "input_tokens")


def test_quantile_matches_numpy():
    xs = list(np.random.default_rng(0).exponential(size=37))
    for q in QUANTILES:
        assert quantile(xs, q) == pytest.approx(np.percentile(xs, q))


def test_bench_against_live_server(server, tmp_path):
    cfg = BenchConfig(f"{server.url}/v1", concurrency=(1, 4), num_requests=5, input_tokens=(40, 10),
                      output_tokens=(8, 2), ignore_eos=True, max_seconds=60, timeout_s=60)
    summary = run_bench(cfg, tmp_path)
    assert summary["model"] == "tiny"
    records = json.loads((tmp_path / "individual_responses.json").read_text())
    assert len(records) == 10 and all(r["error_code"] is None for r in records)
    specs = make_requests(5, (40, 10), (8, 2))
    for c in (1, 4):  # output counts come from the server's usage; with ignore_eos they are max_tokens
        outs = [r["number_output_tokens"] for r in records if r["concurrency"] == c]
        assert sorted(outs) == sorted(s.max_tokens for s in specs)
    for r in records:
        assert r["inter_token_latency_s"] == pytest.approx(
            (r["end_to_end_latency_s"] - r["ttft_s"]) / (r["number_output_tokens"] - 1))
        assert 0 < r["ttft_s"] <= r["end_to_end_latency_s"]
    written = json.loads((tmp_path / "summary.json").read_text())
    assert [run["concurrency"] for run in written["runs"]] == [1, 4]
    for run in written["runs"]:
        assert run["error_rate"] == 0 and run["num_completed_requests"] == 5
        for m in METRICS:
            assert set(run[m]) == {f"p{q}" for q in QUANTILES} | {"mean", "min", "max"}
            assert run[m]["min"] <= run[m]["p50"] <= run[m]["p99"] <= run[m]["max"]
        total = sum(r["number_output_tokens"] for r in records if r["concurrency"] == run["concurrency"])
        assert run["mean_output_throughput_token_per_s"] == pytest.approx(total / run["duration_s"])
    for png in ("latency_percentiles.png", "throughput.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_level_gets_at_least_its_concurrency(server):
    cfg = BenchConfig(f"{server.url}/v1", concurrency=(1, 3), num_requests=2, input_tokens=(10, 0),
                      output_tokens=(2, 0), ignore_eos=True, max_seconds=60, timeout_s=60)
    runs = run_bench(cfg)["runs"]
    assert [r["num_completed_requests"] for r in runs] == [2, 3]


def test_errors_are_counted_not_raised(server, tmp_path):
    cfg = BenchConfig(f"{server.url}/v1", model="no-such-model", concurrency=(2,), num_requests=3,
                      input_tokens=(10, 0), output_tokens=(2, 0))
    run = run_bench(cfg)["runs"][0]
    assert run["error_rate"] == 1 and run["error_codes"] == {"404": 3}
    down = BenchConfig("http://127.0.0.1:9/v1", model="x", concurrency=(1,), num_requests=2, input_tokens=(10, 0),
                       output_tokens=(2, 0), timeout_s=5)
    assert run_bench(down)["runs"][0]["error_codes"] == {"-1": 2}


def test_cli(server, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", "--url", f"{server.url}/v1", "--concurrency", "2", "--num_requests", "2",
                 "--input_tokens", "20", "--output_tokens", "4:1", "--out", str(out)]) == 0
    assert (out / "summary.json").is_file() and "p50 ttft" in capsys.readouterr().out
    assert main(["bench", "--url", "ftp://x", "--num_requests", "1"]) == 2
    assert main(["bench", "--input_tokens", "zero"]) == 2


class DroppingServer:
    """A keep-alive HTTP server on 127.0.0.1 that answers ``answered`` requests per connection with a one-chunk
    chat stream, then closes the connection on the next request without a response (llama.cpp's server does
    this to a pooled connection after a streamed response); counts the requests it read."""

    def __init__(self, answered: int):
        self.answered, self.requests = answered, 0
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(self.handle, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            served = 0
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                self.requests += 1
                if served == self.answered:
                    return
                chunk = {"choices": [{"index": 0, "delta": {"content": "hi there"}}],
                         "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
                body = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nKeep-Alive: timeout=5\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
                served += 1
        except asyncio.IncompleteReadError:  # the client closed the connection
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.mark.parametrize("answered, errors, attempts", [(1, 0, 5), (0, 3, 6)])
def test_a_dropped_pooled_connection_is_retried_once(answered, errors, attempts):
    """A request whose connection closes before any response is sent again on a new one (the server never saw
    it answered, so it is not the server's error); a second drop is an error."""
    server = DroppingServer(answered)
    try:
        cfg = BenchConfig(server.url, model="m", concurrency=(1,), num_requests=3, input_tokens=(10, 0),
                          output_tokens=(2, 0), timeout_s=10)
        run = run_bench(cfg)["runs"][0]
    finally:
        server.close()
    assert run["num_completed_requests"] == 3 - errors and server.requests == attempts
    assert run["error_codes"] == ({"-1": errors} if errors else {})
