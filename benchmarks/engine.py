"""Serving throughput on SmolLM2-135M-Instruct: llmkit's engine vs transformers static batching vs llama-server.

The workload is nano-vllm's benchmark scaled to a CPU: ``--requests`` prompts
of random token ids, lengths uniform in ``--prompt-len`` (32-512), outputs
uniform in ``--output-len`` (32-256), ``ignore_eos`` so every request generates
exactly its length, all submitted at once. Rows, per dtype (fp32, bf16):

- llmkit: :class:`llmkit.engine.LLM` (continuous batching, paged KV, prefix caching);
- transformers: ``generate`` in static left-padded batches of 8 and of 16 (each batch
  runs to its longest output; only requested tokens are counted);
- llama-server: llama.cpp's server with ``--parallel 8`` (continuous batching) on the same
  weights converted to F32/BF16 by llama.cpp, when ``benchmarks/build_llama_server.sh``
  has built it (else the row is skipped).

Columns: output tok/s, total (prompt + output) tok/s, mean and p90 time to first
token, wall time. The engines take turns, ``--rounds`` times, and each keeps its
best round. Then, for llmkit alone: throughput vs concurrency (``max_num_seqs`` 1, 4,
16, 64, with at least 8 requests; a PNG), mean TTFT of 32 requests sharing a 400-token system prompt with and
without prefix caching, batch-1 decode on the engine vs ``generate``, both eager and both compiled (median
step times of generations taking turns),
and n-gram speculation on an input-grounded task (batch 1).

    .venv/bin/python benchmarks/engine.py [--quick] [--dtypes fp32,bf16] [--threads N] [--compile]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LLAMA_TYPES = {"fp32": "F32", "bf16": "BF16"}


def workload(n: int, prompt_len: tuple[int, int], output_len: tuple[int, int], seed: int = 0):
    rng = random.Random(seed)
    return [([rng.randrange(100, 40_000) for _ in range(rng.randint(*prompt_len))], rng.randint(*output_len))
            for _ in range(n)]


def summarise(reqs, ttfts: list[float], wall: float) -> dict[str, float]:
    out_tokens = sum(m for _, m in reqs)
    all_tokens = out_tokens + sum(len(p) for p, _ in reqs)
    ttfts = sorted(ttfts)
    return {"output tok/s": out_tokens / wall, "total tok/s": all_tokens / wall,
            "mean TTFT s": sum(ttfts) / len(ttfts), "p90 TTFT s": ttfts[int(0.9 * (len(ttfts) - 1))], "wall s": wall}


# ----- engines: each maps the workload to (TTFTs, wall seconds) -----
def run_llmkit(llm, reqs):
    from llmkit.engine import SamplingParams

    params = [SamplingParams(max_tokens=m, ignore_eos=True) for _, m in reqs]
    start = time.time()
    outs = llm.generate([p for p, _ in reqs], params, use_tqdm=False)
    wall = time.time() - start
    assert all(len(o.outputs[0].token_ids) == m for o, (_, m) in zip(outs, reqs))
    return [o.metrics.first_token_time - start for o in outs], wall


def transformers_runner(path: Path, dtype: torch.dtype, batch: int):
    import transformers

    transformers.logging.set_verbosity_error()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).to(dtype).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0

    class FirstToken(transformers.LogitsProcessor):  # called once per step, first right after the prefill
        def __call__(self, input_ids, scores):
            self.times.append(time.time())
            return scores

    @torch.inference_mode()
    def run(reqs):
        start, ttfts = time.time(), []
        for i in range(0, len(reqs), batch):
            chunk = reqs[i:i + batch]
            width = max(len(p) for p, _ in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, (p, _) in enumerate(chunk):
                ids[r, width - len(p):], mask[r, width - len(p):] = torch.tensor(p), 1
            first = FirstToken()
            first.times = []
            hf.generate(ids, attention_mask=mask, max_new_tokens=max(m for _, m in chunk), do_sample=False,
                        logits_processor=[first])
            ttfts += [first.times[0] - start] * len(chunk)
        return ttfts, time.time() - start

    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server command on a free port, healthy (``/health`` 200) within ``timeout`` s, stopped on close."""

    def __init__(self, argv: list[str], port: int, env: dict[str, str] | None = None, timeout: float = 600):
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with code {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.close()
        raise RuntimeError(f"{argv[0]} did not become healthy within {timeout} s")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class LlamaServer(ServerProcess):
    """llama.cpp's server on 127.0.0.1 over one GGUF file, with its native streaming completion endpoint."""

    def __init__(self, binary: Path, gguf: Path, parallel: int, ctx: int, threads: int):
        port = free_port()
        super().__init__([str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "--parallel",
                          str(parallel), "--ctx-size", str(ctx), "--threads", str(threads), "--cont-batching",
                          "--no-repack"], port)  # this build's AMX repacked kernels crash on multi-token batches

    def one(self, prompt: list[int], n: int, start: float) -> float:
        """Stream one completion; returns its time to first token."""
        body = json.dumps({"prompt": prompt, "n_predict": n, "ignore_eos": True, "temperature": 0.0,
                           "stream": True, "cache_prompt": False}).encode()
        req = urllib.request.Request(f"{self.url}/completion", data=body,
                                     headers={"Content-Type": "application/json"})
        first, count = None, 0
        with urllib.request.urlopen(req, timeout=3600) as resp:
            for line in resp:
                if line.startswith(b"data: "):
                    chunk = json.loads(line[6:])
                    if chunk.get("content") is not None and first is None:
                        first = time.time() - start
                    count += 1
                    if chunk.get("stop"):
                        break
        return first if first is not None else time.time() - start

    def run(self, reqs):
        start, ttfts = time.time(), [0.0] * len(reqs)

        def worker(i):
            ttfts[i] = self.one(reqs[i][0], reqs[i][1], start)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(reqs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return ttfts, time.time() - start


def llama_server_binary() -> Path | None:
    cached = sorted((Path.home() / ".cache" / "llmkit" / "llama-server").glob("*/llama-server"))
    return cached[-1] if cached else None


def llama_gguf(binary: Path, src: Path, dtype: str) -> Path:
    """``src`` converted by llama.cpp's quantizer to F32/BF16 (cached next to the benchmark cache)."""
    out = Path.home() / ".cache" / "llmkit" / "bench" / f"{src.stem}.{dtype}.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        subprocess.run([str(binary.with_name("llama-quantize")), "--allow-requantize", str(src), str(tmp),
                        LLAMA_TYPES[dtype]], check=True, capture_output=True)
        tmp.rename(out)
    return out


# ----- llmkit-only experiments -----
def concurrency_sweep(model, tok, reqs, levels, compile):
    from llmkit.engine import LLM

    out = {}
    for c in levels:
        llm = LLM(model, tokenizer=tok, max_num_seqs=c, kv_cache_memory="2GiB", compile=compile)
        part = reqs[:max(8, c)]  # enough requests to keep c sequences busy, without hours at c = 1
        ttfts, wall = run_llmkit(llm, part)
        out[c] = summarise(part, ttfts, wall)["output tok/s"]
        print(f"  max_num_seqs={c:<3} {out[c]:8.1f} output tok/s")
    return out


def prefix_cache_ttft(model, tok, n: int = 32):
    from llmkit.engine import LLM, SamplingParams

    rng = random.Random(1)
    system = [rng.randrange(100, 40_000) for _ in range(400)]
    prompts = [system + [rng.randrange(100, 40_000) for _ in range(rng.randint(8, 24))] for _ in range(n)]
    res = {}
    for caching in (False, True):
        llm = LLM(model, tokenizer=tok, kv_cache_memory="2GiB", enable_prefix_caching=caching)
        llm.generate([prompts[0][:8]], SamplingParams(max_tokens=1), use_tqdm=False)  # warm-up
        start = time.time()
        outs = llm.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True), use_tqdm=False)
        res[caching] = sum(o.metrics.first_token_time - start for o in outs) / n
    return res


def batch1_decode(model, tok, n: int, compile: bool, rounds: int = 5):
    """Decode tok/s after a 512-token prompt: engine (bucket 1) vs ``generate``, both compiled or both eager.

    Each decode step is timed on its own (the prompt's step is not), the two take turns for ``rounds``
    generations of ``n`` tokens each, and each keeps the median of its rounds' median step times: on a
    shared 2-core host one busy moment moves a whole run by 10%, a median of steps much less.
    """
    import statistics

    from llmkit.engine import LLM, SamplingParams
    from llmkit.generate.loop import TokenStream

    prompt = workload(1, (512, 512), (1, 1), seed=3)[0][0]
    ids = torch.tensor([prompt])
    llm = LLM(model, tokenizer=tok, kv_cache_memory="1GiB", compile=compile)

    def gen(k):
        stamps = [time.perf_counter() for _ in TokenStream(model, ids, max_new_tokens=k, compile=compile)]
        return [b - a for a, b in zip(stamps, stamps[1:])]  # the first token comes from the prompt's step

    def eng(k):
        engine = llm.engine
        engine.add_request(f"b1-{time.perf_counter()}", prompt, SamplingParams(max_tokens=k, ignore_eos=True))
        engine.step()  # the prompt
        steps = []
        while engine.has_unfinished_requests():
            t0 = time.perf_counter()
            engine.step()
            steps.append(time.perf_counter() - t0)
        return steps

    runs = {"generate": gen, "engine": eng}
    for fn in runs.values():
        fn(3)  # warm-up / compile
    medians: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            medians[name].append(statistics.median(fn(n + 1)))
    return {name: 1 / statistics.median(m) for name, m in medians.items()}


def ngram_speculation(model, tok, n: int):
    """Batch-1 decode tok/s on "repeat this paragraph with the names changed", with and without prompt lookup."""
    from llmkit.engine import LLM, SamplingParams, SpeculativeConfig

    paragraph = ("Elizabeth walked to Netherfield with Jane, and Mr. Bingley met them at the door. "
                 "Jane smiled at Mr. Bingley, and Elizabeth watched Mr. Darcy, who said nothing at all. ") * 2
    chat = [{"role": "user", "content": "Repeat this paragraph exactly, but write Anne for Elizabeth and "
                                        f"Mary for Jane:\n\n{paragraph}"}]
    res = {}
    for name, spec in (("plain", None), ("ngram", SpeculativeConfig("ngram", num_tokens=5))):
        llm = LLM(model, tokenizer=tok, kv_cache_memory="1GiB", speculative=spec)
        llm.generate(chat, SamplingParams(max_tokens=4), use_tqdm=False)
        start = time.perf_counter()
        out = llm.generate(chat, SamplingParams(max_tokens=n, ignore_eos=True), use_tqdm=False)[0]
        res[name] = (n / (time.perf_counter() - start), out.metrics.acceptance_rate)
    return res


def plot(sweeps: dict[str, dict[int, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in sweeps.items():
        ax.plot(list(points), list(points.values()), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (max_num_seqs)")
    ax.set_ylabel("output tokens / s")
    ax.set_title("llmkit engine, SmolLM2-135M-Instruct, 2 CPU cores")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 requests, prompts 32-256, outputs 16-64, 1 round")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="rounds of turn-taking; each engine keeps its best")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--threads", type=int, default=0, help="torch and llama.cpp threads (0 = torch default)")
    ap.add_argument("--compile", action="store_true", help="compile llmkit's decode-only steps")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: table (the throughput table), transformers,llama,sweep,extras")
    ap.add_argument("--png", default=str(ROOT / "docs" / "engine-throughput.png"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    skip = set(filter(None, args.skip.split(",")))
    n, plen, olen, rounds = ((16, (32, 256), (16, 64), 1) if args.quick
                             else (args.requests, (32, 512), (32, 256), args.rounds))
    reqs = workload(n, plen, olen)

    from llmkit.engine import LLM
    from llmkit.generate import load_model_and_tokenizer
    from llmkit.io.pull import resolve_model

    path = resolve_model("smollm2-135m-instruct")
    binary = None if {"llama", "table"} & skip else llama_server_binary()
    print(f"SmolLM2-135M-Instruct, {n} requests, prompts {plen[0]}-{plen[1]}, outputs {olen[0]}-{olen[1]}, "
          f"{threads} threads, torch {torch.__version__}, best of {rounds} round(s)")
    table = {}
    for name in args.dtypes.split(","):
        model, tok = load_model_and_tokenizer(path, dtype=DTYPES[name])
        best: dict[str, dict[str, float]] = {}
        if "table" not in skip:
            engines = {"llmkit": lambda r, m=model, t=tok: run_llmkit(
                LLM(m, tokenizer=t, kv_cache_memory="2GiB", compile=args.compile), r)}
            if "transformers" not in skip:
                for b in (8, 16):
                    engines[f"transformers b{b}"] = transformers_runner(path, DTYPES[name], b)
            server = None
            if binary is not None:
                server = LlamaServer(binary, llama_gguf(binary, path, name), 8, 8 * 1024, threads)
                engines["llama-server p8"] = server.run
            engines["llmkit"](reqs[:2])  # warm-up (and compilation)
            try:
                for _ in range(rounds):
                    for engine, run in engines.items():
                        row = summarise(reqs, *run(reqs))
                        if engine not in best or row["output tok/s"] > best[engine]["output tok/s"]:
                            best[engine] = row
                        print(f"  [{name}] {engine:<16} {row['output tok/s']:8.1f} output tok/s")
            finally:
                if server is not None:
                    server.close()
        table.update({(name, e): r for e, r in best.items()})
        if name == args.dtypes.split(",")[-1] and "sweep" not in skip:
            print(f"[{name}] throughput vs concurrency")
            plot({f"llmkit {name}": concurrency_sweep(model, tok, reqs, (1, 4, 16, 64), args.compile)},
                 Path(args.png))
            print(f"  wrote {args.png}")
        if name == args.dtypes.split(",")[-1] and "extras" not in skip:
            ttft = prefix_cache_ttft(model, tok)
            print(f"[{name}] 32 requests sharing a 400-token system prompt: mean TTFT {ttft[False]:.2f} s without "
                  f"prefix caching, {ttft[True]:.2f} s with (x{ttft[False] / ttft[True]:.1f} lower)")
            for compiled in (False, True):
                rates = batch1_decode(model, tok, 64, compiled)
                print(f"[{name}] batch-1 decode after 512 tokens ({'compiled' if compiled else 'eager'}): "
                      f"engine {rates['engine']:.1f} tok/s, generate {rates['generate']:.1f} tok/s "
                      f"(x{rates['engine'] / rates['generate']:.2f})")
            spec = ngram_speculation(model, tok, 96)
            print(f"[{name}] n-gram speculation, batch 1: {spec['ngram'][0]:.1f} tok/s vs {spec['plain'][0]:.1f} "
                  f"plain (x{spec['ngram'][0] / spec['plain'][0]:.2f}, acceptance {spec['ngram'][1]:.0%})")
        del model

    cols = ["output tok/s", "total tok/s", "mean TTFT s", "p90 TTFT s", "wall s"]
    header = f"{'dtype':<5} {'engine':<17}" + "".join(f"{c:>14}" for c in cols)
    print("\n" + header + "\n" + "-" * len(header))
    for (dtype, engine), row in table.items():
        print(f"{dtype:<5} {engine:<17}" + "".join(f"{row[c]:>14.2f}" for c in cols))
    if binary is None and not {"llama", "table"} & skip:
        print("llama-server: skipped (run benchmarks/build_llama_server.sh to build it)")
    print("\nratios, llmkit / other (output tok/s; > 1 = llmkit faster)")
    for (dtype, engine), row in table.items():
        if engine != "llmkit":
            ours = table[dtype, "llmkit"]
            print(f"  {dtype} vs {engine:<17} x{ours['output tok/s'] / row['output tok/s']:.2f} throughput, "
                  f"mean TTFT x{row['mean TTFT s'] / ours['mean TTFT s']:.2f}")


if __name__ == "__main__":
    main()
