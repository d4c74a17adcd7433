"""Serving under load on SmolLM2-135M-Instruct: llmkit serve vs llama.cpp's llama-server vs a serial transformers server.

Each server runs as its own process on 127.0.0.1 and is driven by ``llmkit bench``'s
load generator (:func:`llmkit.bench.run_bench`: llmperf's workload, streamed chat
completions, ``ignore_eos`` so every request generates exactly its ``max_tokens``,
prompts sized with SmolLM2's tokenizer) at each concurrency (default 1/4/16/64),
for each dtype (fp32, bf16):

- llmkit: ``llmkit serve`` (the engine: continuous batching, paged KV, prefix caching);
- llama-server: llama.cpp's server, ``--parallel`` = the largest concurrency with continuous
  batching, on the same weights converted to F32/BF16 by llama.cpp's quantizer (built by
  ``benchmarks/build_llama_server.sh``; skipped when absent);
- transformers: a minimal OpenAI-compatible server defined here (``--transformers-server``):
  ``generate`` with a ``TextIteratorStreamer``, one request at a time (the baseline a
  hand-written server gives).

It prints one table per dtype: output tok/s, p50/p99 TTFT and p50/p99 inter-token
latency (``(e2e - ttft) / (tokens - 1)``), errors, and each row's ratios to llama-server and
transformers (throughput: ours / theirs; TTFT: theirs / ours, so > 1 means the row is ahead), and
keeps every run's ``summary.json`` / PNGs under ``--out``, with one ``serve_<dtype>.png`` comparing
the servers. All servers get the same thread count. Run it with nothing else on the machine.

    .venv/bin/python benchmarks/serve.py [--dtypes fp32,bf16] [--concurrency 1,4,16,64] [--num-requests 32]
        [--input-tokens 550:150] [--output-tokens 150:10] [--threads N] [--skip transformers,llama] [--llmkit-args "--compile false"]
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
MODEL = "smollm2-135m-instruct"


def start(engine: str, dtype: str, gguf: Path, threads: int, parallel: int, extra: list[str]) -> "ServerProcess":
    from engine import ServerProcess, free_port, llama_gguf, llama_server_binary  # benchmarks/engine.py

    port = free_port()
    env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    if engine == "llmkit":
        return ServerProcess([str(ROOT / ".venv/bin/llmkit"), "serve", "--model", str(gguf), "--served_model_name",
                              MODEL, "--dtype", dtype, "--port", str(port), "--max_num_seqs", str(parallel),
                              "--max_queue", str(4 * parallel), "--log_level", "warning", *extra], port, env)
    if engine == "llama-server":
        binary = llama_server_binary()
        return ServerProcess([str(binary), "-m", str(llama_gguf(binary, gguf, dtype)), "--host", "127.0.0.1",
                              "--port", str(port), "--parallel", str(parallel), "--ctx-size", str(parallel * 2048),
                              "--cont-batching", "--no-webui", "--alias", MODEL,
                              "--no-repack"]  # this build's AMX repacked kernels crash on multi-token batches
                             + (["--threads", str(threads)] if threads else []), port)
    return ServerProcess([sys.executable, __file__, "--transformers-server", "--port", str(port), "--dtype", dtype,
                          "--gguf", str(gguf)], port, env)


# ----- the transformers baseline server -----
def transformers_server(port: int, dtype: str, gguf: Path) -> None:
    """An OpenAI-compatible chat endpoint over ``transformers.generate``, serving one request at a time."""
    import asyncio
    import json
    import threading

    import torch
    import transformers
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    transformers.logging.set_verbosity_error()
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).to(
        {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]).eval()
    app, lock = FastAPI(), asyncio.Lock()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(body: dict):  # a plain dict body: this server checks nothing
        enc = tok.apply_chat_template(body["messages"], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        ids = enc["input_ids"]
        max_tokens = body.get("max_tokens") or 256
        streamer = transformers.TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        count = [0]

        class Count(transformers.LogitsProcessor):
            def __call__(self, input_ids, scores):
                count[0] += 1
                return scores

        kwargs = dict(input_ids=ids, attention_mask=enc["attention_mask"], max_new_tokens=max_tokens, do_sample=False,
                      streamer=streamer, logits_processor=[Count()],
                      min_new_tokens=max_tokens if body.get("ignore_eos") else 0)

        async def events():
            async with lock:  # serial: one generate at a time
                thread = threading.Thread(target=lambda: model.generate(**kwargs), daemon=True)
                thread.start()
                pieces = iter(streamer)
                while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                    if piece:
                        yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': piece}}]})}\n\n"
                thread.join()
            usage = {"prompt_tokens": ids.shape[1], "completion_tokens": count[0],
                     "total_tokens": ids.shape[1] + count[0]}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ----- the comparison -----
def table(dtype: str, results: dict[str, dict]) -> None:
    levels = [r["concurrency"] for r in next(iter(results.values()))["runs"]]
    print(f"\n## {dtype}\n")
    print("| engine | conc | out tok/s | p50 TTFT ms | p99 TTFT ms | p50 ITL ms | p99 ITL ms | errors | "
          "tok/s vs llama | p50 TTFT vs llama | tok/s vs transformers |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, summary in results.items():
        for i, c in enumerate(levels):
            if i >= len(summary["runs"]):
                continue
            r = summary["runs"][i]

            def ms(metric, q, r=r):
                v = r[metric][q]
                return "-" if v is None else f"{v * 1000:.0f}"

            def ratio(peer, metric, q=None, inverse=False, i=i, r=r):
                """ours / peer's (peer's / ours with inverse, so > 1 always means ours is ahead)."""
                if peer not in results or peer == name or i >= len(results[peer]["runs"]):
                    return "-"
                a, b = r[metric], results[peer]["runs"][i][metric]
                a, b = (a[q], b[q]) if q else (a, b)
                if not a or not b:
                    return "-"
                return f"{(b / a if inverse else a / b):.2f}"

            tp = "mean_output_throughput_token_per_s"
            print(f"| {name} | {c} | {r[tp]:.1f} | {ms('ttft_s', 'p50')} | {ms('ttft_s', 'p99')} | "
                  f"{ms('inter_token_latency_s', 'p50')} | {ms('inter_token_latency_s', 'p99')} | {r['num_errors']} | "
                  f"{ratio('llama-server', tp)} | {ratio('llama-server', 'ttft_s', 'p50', inverse=True)} | "
                  f"{ratio('transformers', tp)} |")


def plot(dtype: str, results: dict[str, dict], path: Path) -> None:
    """One PNG per dtype: output tok/s, p50 TTFT and p50 ITL vs concurrency, a line per server."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (("mean_output_throughput_token_per_s", None, "output tokens / s"),
              ("ttft_s", "p50", "p50 time to first token (s)"),
              ("inter_token_latency_s", "p50", "p50 inter-token latency (s)"))
    for ax, (metric, q, label) in zip(axes, panels):
        for name, summary in results.items():
            conc = [r["concurrency"] for r in summary["runs"]]
            ys = [r[metric][q] if q else r[metric] for r in summary["runs"]]
            ax.plot(conc, [float("nan") if y is None else y for y in ys], "o-", label=name)
            ax.set(xscale="log", xticks=conc, xticklabels=[str(c) for c in conc])
        ax.set(xlabel="concurrency", ylabel=label, yscale="linear" if q is None else "log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{MODEL} served on loopback, {dtype}: llmperf workload, streamed")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--num-requests", type=int, default=32,
                    help="per concurrency (a level gets at least its concurrency); 32 keeps the default run, "
                         "serial baseline included, near 1.5 h on 2 cores")
    ap.add_argument("--input-tokens", default="550:150")
    ap.add_argument("--output-tokens", default="150:10")
    ap.add_argument("--threads", type=int, default=0, help="threads of every server (0 = their default)")
    ap.add_argument("--max-seconds", type=float, default=900, help="per concurrency: no request starts after this")
    ap.add_argument("--llmkit-args", default="", help="extra `llmkit serve` flags, e.g. '--compile false'")
    ap.add_argument("--skip", default="", help="comma-separated: transformers,llama")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve"))
    # internal: run the transformers baseline server
    ap.add_argument("--transformers-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--gguf", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.transformers_server:
        transformers_server(args.port, args.dtype, Path(args.gguf))
        return

    from engine import llama_server_binary

    from llmkit.bench import BenchConfig, run_bench
    from llmkit.bench.workload import parse_length
    from llmkit.io.pull import pull
    from llmkit.tokenizer import Tokenizer

    gguf = pull(MODEL)
    tok = Tokenizer.from_pretrained(gguf)
    levels = tuple(int(c) for c in args.concurrency.split(","))
    skip = set(args.skip.split(",")) - {""}
    engines = ["llmkit"]
    if "llama" not in skip:
        if llama_server_binary() is None:
            print("llama-server: skipped (run benchmarks/build_llama_server.sh to build it)")
        else:
            engines.append("llama-server")
    if "transformers" not in skip:
        engines.append("transformers")
    for dtype in args.dtypes.split(","):
        results = {}
        for engine in engines:
            server = start(engine, dtype, gguf, args.threads, max(levels), shlex.split(args.llmkit_args))
            try:
                cfg = BenchConfig(f"{server.url}/v1", MODEL, levels, args.num_requests,
                                  parse_length(args.input_tokens, "input-tokens"),
                                  parse_length(args.output_tokens, "output-tokens"), ignore_eos=True,
                                  max_seconds=args.max_seconds,
                                  # the serial baseline answers 64 queued clients one by one: ~10 min for the last
                                  timeout_s=3600)
                results[engine] = run_bench(cfg, Path(args.out) / f"{engine}-{dtype}",
                                            count=lambda s: len(tok.encode(s, add_special_tokens=False)))
            finally:
                server.close()
        table(dtype, results)
        plot(dtype, results, Path(args.out) / f"serve_{dtype}.png")


if __name__ == "__main__":
    main()
