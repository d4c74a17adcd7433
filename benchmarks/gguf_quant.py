"""Native GGUF blocks on SmolLM2-135M-Instruct: batch-1 decode speed and memory, Q4_1/Q8_0 kept vs fp32/bf16.

Rows (all from the same Q4_1 file, so every row holds the same weights up to its own rounding):

- fp32, bf16: the file dequantised (``load_model(path)``), cast for bf16;
- Q4_1 native: the file itself, ``keep_quantized=True`` (GGUFLinear, llmkit's block kernels,
  exact fp32 products); "Q4_1 native int8" the same with ``int8_activations`` (llama.cpp's
  int8-rounded activations in decode steps);
- Q8_0 native: the dequantised model exported by ``export_gguf(dtype="q8_0")`` (written once
  to ``~/.cache/llmkit/bench``) and loaded with ``keep_quantized=True``;
- llama.cpp Q4_1 / Q8_0 on the same two files, when llama-cpp-python is installed.

Columns: the weights' bytes in memory (distinct tensors; the mapped file for native rows),
TTFT (a 128-token prompt, batch 1) and decode tokens/s after it, ``(t(1 + n) - t(1)) / n``,
greedy, best of ``--repeats`` with the engines taking turns. llmkit rows run eagerly and with
the compiled decode step (``+compile``; its compile time is printed, not counted).

The machine these numbers come from is usually shared: pass ``--threads 1`` so OpenMP
threads do not spin against other jobs, and read differences under ~20% as noise.

    .venv/bin/python benchmarks/gguf_quant.py [--quick] [--threads N] [--no-compile]
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

Run = Callable[[torch.Tensor, int], None]  # generate exactly n tokens after the (1, T) prompt


def int8_activations(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every GGUF block layer decoding with int8-rounded activations."""
    from llmkit.quant.gguf_linear import GGUFLinear

    for m in model.modules():
        if isinstance(m, GGUFLinear):
            m.int8_activations = True
    return model


def weight_mb(model: torch.nn.Module) -> float:
    """Megabytes of the model's distinct tensors (a tied table counted once)."""
    seen = {t.data_ptr(): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}
    return sum(seen.values()) / 1e6


def llmkit_run(model, compile: bool) -> Run:
    from llmkit.generate import generate_tokens

    def run(ids: torch.Tensor, n: int) -> None:
        out = generate_tokens(model, ids, max_new_tokens=n, compile=compile)  # no stop ids: exactly n
        assert len(out.token_ids[0]) == n

    return run


def llama_cpp_run(path: Path, threads: int) -> Run | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(path), n_ctx=512, n_batch=512, n_threads=threads, verbose=False)
    no_eos = {llm.token_eos(): float("-inf")}

    def run(ids: torch.Tensor, n: int) -> None:
        llm.reset()
        llm.create_completion(ids[0].tolist(), max_tokens=n, temperature=0.0, logit_bias=no_eos)

    return run


def measure(runs: dict[str, Run], prompt: torch.Tensor, n: int, repeats: int) -> dict[str, tuple[float, float]]:
    """(TTFT ms, decode tok/s) per engine, best of ``repeats`` rounds in which the engines take turns."""
    for run in runs.values():
        run(prompt, 2)  # warm-up
    first = {k: [] for k in runs}
    full = {k: [] for k in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            for times, tokens in ((first, 1), (full, n + 1)):
                start = time.perf_counter()
                run(prompt, tokens)
                times[name].append(time.perf_counter() - start)
    return {k: (min(first[k]) * 1e3, n / (min(full[k]) - min(first[k]))) for k in runs}


def q8_0_file(src: Path) -> Path:
    """The Q4_1 file's dequantised weights re-exported as Q8_0 by llmkit (cached)."""
    from llmkit.io import export_gguf, load_model
    from llmkit.tokenizer.gguf_format import read_gguf_metadata

    out = Path.home() / ".cache" / "llmkit" / "bench" / f"{src.stem.rsplit('.', 1)[0]}.Q8_0.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        export_gguf(load_model(src), out, dtype="q8_0", tokenizer_metadata=read_gguf_metadata(src))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 new tokens and 1 repeat instead of 128 and 3")
    ap.add_argument("--threads", type=int, default=0, help="torch (and llama.cpp) threads; 0 = torch default")
    ap.add_argument("--no-compile", action="store_true", help="eager rows only (saves the compile time)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    n, repeats = (32, 1) if args.quick else (128, 3)

    from llmkit.io import load_model
    from llmkit.io.pull import resolve_model
    from llmkit.quant import gguf_ops

    q4_1 = resolve_model("smollm2-135m-instruct")
    q8_0 = q8_0_file(q4_1)
    gguf_ops.load()
    int8 = torch.ops.llmkit.gguf_int8_activations()  # whether the int8 row really rounds to int8
    prompt = torch.randint(100, 40_000, (1, 128), generator=torch.Generator().manual_seed(0))
    print(f"SmolLM2-135M-Instruct on cpu, {threads} threads, torch {torch.__version__}; {n} new tokens after "
          f"{prompt.shape[1]}, best of {repeats}; int8 row: {'int8' if int8 else 'fp32 (no AVX2)'} dot products")

    models = {
        "fp32": (load_model(q4_1), q4_1),
        "bf16": (load_model(q4_1, dtype=torch.bfloat16), q4_1),
        "Q4_1 native": (load_model(q4_1, keep_quantized=True), q4_1),
        "Q4_1 native int8": (int8_activations(load_model(q4_1, keep_quantized=True)), q4_1),
        "Q8_0 native": (load_model(q8_0, keep_quantized=True), q8_0),
    }
    runs: dict[str, Run] = {}
    for name, (model, _) in models.items():
        runs[f"llmkit {name}"] = llmkit_run(model, False)
        if not args.no_compile:
            start = time.perf_counter()
            llmkit_run(model, True)(prompt, 2)
            print(f"[{name}] compiling the decode step took {time.perf_counter() - start:.0f} s")
            runs[f"llmkit {name} +compile"] = llmkit_run(model, True)
    for label, path in (("Q4_1", q4_1), ("Q8_0", q8_0)):
        if (cpp := llama_cpp_run(path, threads)) is not None:
            runs[f"llama.cpp {label}"] = cpp
    rows = measure(runs, prompt, n, repeats)

    header = f"{'engine':<30} {'weights (MB)':>12} {'TTFT (ms)':>10} {'decode b1 (tok/s)':>18}"
    print("\n" + header + "\n" + "-" * len(header))
    for engine, (ttft, tps) in rows.items():
        key = max((k for k in models if k in engine), key=len)  # "Q4_1 native int8" over "Q4_1 native"
        mb = weight_mb(models[key][0]) if engine.startswith("llmkit") else \
            (q4_1 if "Q4_1" in engine else q8_0).stat().st_size / 1e6
        print(f"{engine:<30} {mb:>12.0f} {ttft:>10.0f} {tps:>18.1f}")
    if not any(k.startswith("llama.cpp") for k in rows):
        print("llama.cpp rows skipped: llama-cpp-python is not installed")
    print(f"\nfiles: {q4_1.name} {q4_1.stat().st_size / 1e6:.0f} MB, {q8_0.name} {q8_0.stat().st_size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
