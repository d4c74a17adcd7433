"""Generation speed on SmolLM2-135M-Instruct: llmkit vs transformers ``generate`` (and llama.cpp when installed).

All engines load the same GGUF file: llmkit and transformers dequantise it to
fp32 (and cast to bf16 for the bf16 rows). llama-cpp-python, if installed,
runs the Q4_1 file natively and, for a same-precision comparison, copies of it
that llama.cpp's own quantizer converts to F32 and BF16 (the same dequantised
values the other engines run; written once to ``~/.cache/llmkit/bench``).
Measured, each as the best of 3 runs (1 with ``--quick``), greedy, EOS disabled
so every run generates exactly the requested tokens; the engines of one dtype
take turns, so noise from a neighbour does not favour one of them:

- TTFT: time to the first token for a 512-token prompt, batch 1 (prefill + one token);
- decode b1: tokens/s after that prompt, ``(t(1 + N tokens) - t(1 token)) / N``;
- decode b8: aggregate tokens/s of 8 rows with 64-token prompts, same differencing.

"llmkit" is the eager loop; "llmkit+compile" compiles the decode step (its
one-off compile time is printed, not counted). Ratios are llmkit's best row
over the other engine (> 1 = llmkit faster; for TTFT, their time over ours).

On a CPU shared with other jobs, pass ``--threads 1``: OpenMP threads that
compete with other processes for cores slow small decode steps several-fold.
On CPU the compiled rows attend over a power-of-two cache (1024 slots for
the 512-token prompt, see ``llmkit.generate.loop``), which costs them some
TTFT against the eager rows' tighter cache.

    .venv/bin/python benchmarks/generate.py [--quick] [--threads N] [--no-compile] [--profile]
"""
from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
Run = Callable[[torch.Tensor, int], None]  # generate exactly n tokens for every row of (B, T) prompt ids


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(engines: dict[str, Run], long_prompt: torch.Tensor, batch: torch.Tensor, n: int,
            repeats: int) -> dict[str, tuple[float, float, float]]:
    """(TTFT ms, decode b1 tok/s, decode b8 tok/s) per engine; b8 is NaN for an engine without a batch path.

    The engines take turns, one round of every measurement each, ``repeats`` times, and each
    keeps its best: a burst of noise from a neighbour then hits one round, not one engine.
    """
    batched = {}
    for name, run in engines.items():
        run(long_prompt, 2)  # warm-up (and compilation of the decode step)
        try:
            run(batch, 2)
            batched[name] = True
        except NotImplementedError:
            batched[name] = False
    times = {name: [[], [], [], []] for name in engines}  # TTFT, prompt + n, batch first, batch + n
    for _ in range(repeats):
        for name, run in engines.items():
            calls = [(long_prompt, 1), (long_prompt, n + 1)]
            if batched[name]:
                calls += [(batch, 1), (batch, n + 1)]
            for slot, (ids, tokens) in enumerate(calls):
                times[name][slot].append(_timed(lambda: run(ids, tokens)))
    rows = {}
    for name, (ttft, long, first, full) in times.items():
        ttft = min(ttft)
        b8 = batch.shape[0] * n / (min(full) - min(first)) if batched[name] else float("nan")
        rows[name] = (ttft * 1e3, n / (min(long) - ttft), b8)
    return rows


def llmkit_engine(model, compile: bool) -> Run:
    from llmkit.generate import generate_tokens

    def run(ids: torch.Tensor, n: int) -> None:
        out = generate_tokens(model, ids, max_new_tokens=n, compile=compile)  # no stop ids: exactly n tokens
        assert all(len(t) == n for t in out.token_ids)

    return run


def transformers_engine(path, dtype: torch.dtype) -> Run:
    import transformers

    transformers.logging.set_verbosity_error()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).to(dtype).eval()
    hf.generation_config.eos_token_id = None  # never stop early
    hf.generation_config.pad_token_id = 0

    @torch.inference_mode()
    def run(ids: torch.Tensor, n: int) -> None:
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
        assert out.shape[1] == ids.shape[1] + n

    return run


LLAMA_FTYPES = {"fp32": "LLAMA_FTYPE_ALL_F32", "bf16": "LLAMA_FTYPE_MOSTLY_BF16"}


def llama_cpp_gguf(path: Path, dtype: str) -> Path:
    """``path`` converted by llama.cpp to ``dtype`` ("fp32"/"bf16"; "q4_1" is the file itself)."""
    import llama_cpp

    if dtype == "q4_1":
        return path
    out = Path.home() / ".cache" / "llmkit" / "bench" / f"{path.stem}.{dtype}.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize = getattr(llama_cpp, LLAMA_FTYPES[dtype]), True
        tmp = out.with_suffix(".tmp")
        if llama_cpp.llama_model_quantize(str(path).encode(), str(tmp).encode(), params) != 0:
            raise RuntimeError(f"llama.cpp could not convert {path} to {dtype}")
        tmp.rename(out)
    return out


def llama_cpp_engine(path, dtype: str, threads: int) -> Run | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    path = llama_cpp_gguf(path, dtype)
    llm = Llama(model_path=str(path), n_ctx=1024, n_batch=512, n_threads=threads, verbose=False)
    no_eos = {llm.token_eos(): float("-inf")}

    def run(ids: torch.Tensor, n: int) -> None:
        if ids.shape[0] != 1:
            raise NotImplementedError("llama-cpp-python generates one sequence at a time")
        llm.reset()  # no prefix reuse between runs
        llm.create_completion(ids[0].tolist(), max_tokens=n, temperature=0.0, logit_bias=no_eos)

    return run


def profile_decode(model, prompt: torch.Tensor, n: int) -> None:
    """Where eager decode time goes after ``prompt``: the top ops by self CPU time (prefill excluded)."""
    from torch.profiler import ProfilerActivity, profile

    from llmkit.generate import TokenStream

    steps = iter(TokenStream(model, prompt, max_new_tokens=n + 1))
    next(steps)  # prefill and first token, outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in steps:
            pass
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    for label, keys in [("matmuls", ("aten::mm", "aten::addmm", "aten::bmm")),
                        ("attention", ("aten::_scaled_dot_product_flash_attention_for_cpu",))]:
        share = sum(e.self_cpu_time_total for e in events if e.key in keys)
        print(f"{label}: {100 * share / total:.0f}% of self CPU time over {n} decode steps after {prompt.shape[1]} tokens")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 new tokens and 1 repeat instead of 128 and 3")
    ap.add_argument("--threads", type=int, default=0, help="torch (and llama.cpp) threads; 0 = torch default")
    ap.add_argument("--no-compile", action="store_true", help="skip the llmkit+compile rows (saves compile time)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated subset of fp32,bf16")
    ap.add_argument("--profile", action="store_true", help="also profile an eager fp32 decode")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    n, repeats = (32, 1) if args.quick else (128, 3)

    from llmkit.generate import load_model_and_tokenizer
    from llmkit.io.pull import resolve_model

    path = resolve_model("smollm2-135m-instruct")
    gen = torch.Generator().manual_seed(0)
    long_prompt = torch.randint(100, 40_000, (1, 512), generator=gen)
    batch = torch.randint(100, 40_000, (8, 64), generator=gen)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"SmolLM2-135M-Instruct ({path.name}) on {device}, {threads} threads, torch {torch.__version__}; "
          f"{n} new tokens, best of {repeats}")

    rows: dict[tuple[str, str], tuple[float, ...]] = {}
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        model, _ = load_model_and_tokenizer(path, dtype=dtype, device=device)
        if args.profile and name == "fp32":
            profile_decode(model, long_prompt, 16)
        engines = {"llmkit": llmkit_engine(model, False)}
        if not args.no_compile:
            start = time.perf_counter()
            llmkit_engine(model, True)(long_prompt, 2)
            print(f"[{name}] compiling the batch-1 decode step took {time.perf_counter() - start:.0f} s (batch 8 compiles again)")
            engines["llmkit+compile"] = llmkit_engine(model, True)
        engines["transformers"] = transformers_engine(path, dtype)
        cpp = llama_cpp_engine(path, name, threads)
        if cpp is not None:
            engines["llama.cpp"] = cpp
        rows.update({(name, engine): v for engine, v in measure(engines, long_prompt, batch, n, repeats).items()})
        del model, engines
    cpp = llama_cpp_engine(path, "q4_1", threads)
    if cpp is not None:
        rows["q4_1", "llama.cpp"] = measure({"llama.cpp": cpp}, long_prompt, batch, n, repeats)["llama.cpp"]

    header = f"{'dtype':<6} {'engine':<16} {'TTFT b1 (ms)':>13} {'decode b1 (tok/s)':>18} {'decode b8 (tok/s)':>18}"
    print("\n" + header + "\n" + "-" * len(header))
    for (dtype, engine), (ttft, b1, b8) in rows.items():
        print(f"{dtype:<6} {engine:<16} {ttft:>13.0f} {b1:>18.1f} {b8:>18.1f}")
    if cpp is None:
        print(f"{'q4_1':<6} {'llama.cpp':<16} skipped: llama-cpp-python is not installed")
    print("\nratios, llmkit's best row / other (> 1 = llmkit faster)")
    for name in args.dtypes.split(","):
        ours = [v for (d, e), v in rows.items() if d == name and e.startswith("llmkit")]
        best = (min(v[0] for v in ours), max(v[1] for v in ours), max(v[2] for v in ours))
        others = [(e, v) for (d, e), v in rows.items() if not e.startswith("llmkit") and d == name]
        for engine, (ttft, b1, b8) in others:
            b8_ratio = "n/a (no batch path)" if math.isnan(b8) else f"x{best[2] / b8:.2f}"
            print(f"  {name} vs {engine:<13} TTFT x{ttft / best[0]:.2f}   decode b1 x{best[1] / b1:.2f}   "
                  f"decode b8 {b8_ratio}")


if __name__ == "__main__":
    main()
