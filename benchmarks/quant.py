"""Quantisation on SmolLM2-135M-Instruct: size, memory, held-out perplexity and decode speed per scheme.

One row per format: fp32, bf16, and every scheme of ``llmkit.quant.QUANT_SCHEMES``
(quantised from the bf16 model by default, calibrated on 32 x 256 tokens of
Shakespeare's training split), plus llama.cpp's Q8_0 / Q4_0 / Q4_1 files of
the same model when llama-cpp-python is installed (skipped otherwise). Every
row is saved to disk and then measured in a fresh process that loads it, so:

- file size: the saved directory (or the GGUF file);
- resident memory: the process's RSS growth from loading the model and reading
  every page of its tensors (safetensors are memory-mapped, so unread pages would
  not count); llama.cpp's after its perplexity run, which reads every weight;
- perplexity: the first ``--eval-tokens`` tokens of Shakespeare's held-out
  plays, windows of 1024 tokens with stride 512, the same windows for llama.cpp;
- TTFT: time to the first token after a 512-token prompt (batch 1);
- decode: batch-1 tokens/s after that prompt, ``(t(1 + n) - t(1)) / n``, greedy,
  with the compiled decode step (``--no-compile``: eager).

All the weights come from one GGUF (Q4_1), dequantised: every row starts from
the same values, llama.cpp's requantised files included.

    .venv/bin/python benchmarks/quant.py [--quick] [--threads N] [--schemes int8,int4,...] [--no-compile]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MODEL = "smollm2-135m-instruct"
WINDOW, STRIDE = 1024, 512
OPTIONS = {"int4": {"group_size": 64}, "gptq": {"group_size": 64}, "awq": {"group_size": 64}}  # K = 576
LLAMA_CPP = {"Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q4_1": None}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def touch_pages(model) -> None:
    """Read one value per 4 KiB page of every tensor: weights loaded from a memory map are resident only once read."""
    for t in model.state_dict().values():
        flat = t.reshape(-1).view(torch.uint8) if t.dtype != torch.uint8 else t.reshape(-1)
        flat[::4096].sum()


def held_out_ids(tokenizer, n_tokens: int) -> list[int]:
    from llmkit.eval.perplexity import resolve_text

    text = resolve_text("shakespeare")[0]
    return [tokenizer.bos_id] + tokenizer.encode(text[: n_tokens * 8], add_special_tokens=False)[:n_tokens]


def dir_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.iterdir())


# ----- the child process: load one saved row and measure it -----
def measure_llmkit(path: Path, n_eval: int, n_new: int, compile: bool) -> dict:
    from llmkit.eval.perplexity import windowed_nll
    from llmkit.generate import generate_tokens, load_model_and_tokenizer

    before = rss_bytes()
    model, tokenizer = load_model_and_tokenizer(path)
    touch_pages(model)
    memory = rss_bytes() - before
    with torch.no_grad():
        nll, n, _ = windowed_nll(model, held_out_ids(tokenizer, n_eval), window=WINDOW, stride=STRIDE)

    def run(k: int) -> float:
        start = time.perf_counter()
        generate_tokens(model, prompt, max_new_tokens=k, compile=compile)
        return time.perf_counter() - start

    prompt = torch.randint(100, 40_000, (1, 512), generator=torch.Generator().manual_seed(0))
    run(2)  # warm-up and compilation
    ttft = min(run(1) for _ in range(2))
    full = min(run(n_new + 1) for _ in range(2))
    return {"memory": memory, "ppl": float(torch.tensor(nll / n).exp()), "ttft": ttft, "tok_s": n_new / (full - ttft)}


def measure_llama_cpp(path: Path, n_eval: int, n_new: int, threads: int) -> dict:
    import numpy as np
    from llama_cpp import Llama

    from llmkit.eval.perplexity import sliding_windows
    from llmkit.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(path)  # the GGUF's own tokenizer: the same ids as ours
    ids = held_out_ids(tokenizer, n_eval)
    before = rss_bytes()
    llm = Llama(model_path=str(path), n_ctx=WINDOW, n_batch=512, n_threads=threads, logits_all=True, verbose=False)
    nll, n = 0.0, 0
    for begin, end, targets in sliding_windows(len(ids), WINDOW, STRIDE):
        llm.reset()
        llm.eval(ids[begin:end])
        logits = np.asarray(llm.scores[: end - begin], dtype=np.float64)[-targets - 1:-1]  # predict the targets
        logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        nll -= logp[np.arange(targets), ids[end - targets:end]].sum()
        n += targets
    memory = rss_bytes() - before
    prompt = torch.randint(100, 40_000, (512,), generator=torch.Generator().manual_seed(0)).tolist()
    no_eos = {llm.token_eos(): float("-inf")}

    def run(k: int) -> float:
        llm.reset()
        start = time.perf_counter()
        llm.create_completion(prompt, max_tokens=k, temperature=0.0, logit_bias=no_eos)
        return time.perf_counter() - start

    run(2)
    ttft = min(run(1) for _ in range(2))
    full = min(run(n_new + 1) for _ in range(2))
    return {"memory": memory, "ppl": float(np.exp(nll / n)), "ttft": ttft, "tok_s": n_new / (full - ttft)}


# ----- the parent: build each row, then measure it in a child -----
def build_rows(schemes: list[str], base_dtype: torch.dtype, out: Path) -> dict[str, Path]:
    from llmkit.generate import load_model_and_tokenizer
    from llmkit.quant import QUANT_SCHEMES, quantize
    from llmkit.quant.calibrate import calibration_ids

    rows = {}
    for name in ["fp32", "bf16", *schemes]:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(name, base_dtype)
        model, tokenizer = load_model_and_tokenizer(MODEL, dtype=dtype)
        if name in QUANT_SCHEMES:
            start = time.perf_counter()
            calib = calibration_ids(tokenizer, "shakespeare", 32, 256) if QUANT_SCHEMES[name].calibrated else None
            quantize(model, name, calib, **OPTIONS.get(name, {}))
            print(f"[{name}] quantised in {time.perf_counter() - start:.0f} s", flush=True)
        rows[name] = out / name
        model.save_pretrained(rows[name])
        tokenizer.save_pretrained(rows[name])
    return rows


def llama_cpp_rows(out: Path) -> dict[str, Path]:
    """llama.cpp's requantisations of the GGUF (empty without llama-cpp-python)."""
    try:
        import llama_cpp
    except ImportError:
        return {}
    from llmkit.io.pull import resolve_model

    source = resolve_model(MODEL)
    rows = {}
    for name, ftype in LLAMA_CPP.items():
        if ftype is None:
            rows[name] = source
            continue
        rows[name] = out / f"{name}.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize = getattr(llama_cpp, ftype), True
        if llama_cpp.llama_model_quantize(str(source).encode(), str(rows[name]).encode(), params) != 0:
            raise RuntimeError(f"llama.cpp could not write {name}")
    return rows


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    path = Path(args.measure)
    if path.suffix == ".gguf":
        result = measure_llama_cpp(path, args.eval_tokens, args.new_tokens, torch.get_num_threads())
    else:
        result = measure_llmkit(path, args.eval_tokens, args.new_tokens, not args.no_compile)
    print("RESULT " + json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1024 held-out tokens and 16 new tokens (instead of 4096, 64)")
    ap.add_argument("--threads", type=int, default=0, help="torch and llama.cpp threads; 0 = torch default")
    ap.add_argument("--schemes", default="", help="comma-separated subset of QUANT_SCHEMES (default: all)")
    ap.add_argument("--base", default="bf16", choices=["fp32", "bf16"], help="dtype the schemes quantise from")
    ap.add_argument("--no-compile", action="store_true", help="decode eagerly")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # internal: measure one saved row
    ap.add_argument("--eval-tokens", type=int, default=4096, help=argparse.SUPPRESS)
    ap.add_argument("--new-tokens", type=int, default=64, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.eval_tokens, args.new_tokens = 1024, 16
    if args.measure:
        return child(args)

    from llmkit.quant import QUANT_SCHEMES

    schemes = args.schemes.split(",") if args.schemes else list(QUANT_SCHEMES)
    unknown = set(schemes) - set(QUANT_SCHEMES)
    if unknown:
        ap.error(f"unknown schemes {sorted(unknown)}; choose from {', '.join(QUANT_SCHEMES)}")
    base = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.base]
    with tempfile.TemporaryDirectory() as tmp:
        rows = {**build_rows(schemes, base, Path(tmp)), **llama_cpp_rows(Path(tmp))}
        results = {}
        for name, path in rows.items():
            cmd = [sys.executable, __file__, "--measure", str(path), "--eval-tokens", str(args.eval_tokens),
                   "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
            cmd += ["--no-compile"] if args.no_compile else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"[{name}] failed:\n{proc.stderr[-2000:]}", flush=True)
                continue
            results[name] = {**json.loads(line[7:]), "size": dir_bytes(path)}
            print(f"[{name}] {results[name]}", flush=True)

    print(f"\nSmolLM2-135M-Instruct, torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads, "
          f"schemes from {args.base}, decode {'eager' if args.no_compile else 'compiled'}, "
          f"perplexity on {args.eval_tokens} held-out Shakespeare tokens")
    header = (f"{'format':<12} {'engine':<9} {'file (MiB)':>10} {'memory (MiB)':>12} {'perplexity':>10} "
              f"{'TTFT (ms)':>9} {'decode b1 (tok/s)':>17}")
    print(header + "\n" + "-" * len(header))
    for name, r in results.items():
        engine = "llama.cpp" if name in LLAMA_CPP else "llmkit"
        print(f"{name:<12} {engine:<9} {r['size'] / 2**20:>10.1f} {r['memory'] / 2**20:>12.1f} {r['ppl']:>10.3f} "
              f"{r['ttft'] * 1e3:>9.0f} {r['tok_s']:>17.1f}")
    if not any(name in LLAMA_CPP for name in results):
        print(f"{'Q8_0/Q4_0/Q4_1':<12} llama.cpp  skipped: llama-cpp-python is not installed")


if __name__ == "__main__":
    main()
