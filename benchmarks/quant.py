"""Quantisation side by side: size, memory, held-out perplexity, TTFT and decode speed per scheme, vs llama.cpp.

Two models: SmolLM2-135M-Instruct (its Q4_1 GGUF dequantised, so every row starts from the same
values) and a speedrun model (``llmkit speedrun``'s nano pretraining, trained once into
``~/.cache/llmkit/speedrun/nano-quant`` when absent). For each: fp32, bf16 and every scheme of
``llmkit.quant.QUANT_SCHEMES`` (quantised from bf16, calibrated on 32 x 256 tokens of
Shakespeare's training split), and llama.cpp on F32/Q8_0/Q4_0/Q4_1 files of the same weights
(our f32 GGUF export, ``llama-quantize``d; skipped when benchmarks/build_llama_server.sh has not
built the binaries). Every llmkit row is saved, then measured in a fresh process that loads it:

- file: the saved directory or GGUF file;
- memory: llmkit: the RSS growth from loading the model and reading every page of its tensors;
  llama.cpp: the peak RSS of ``llama-bench`` decoding one token (the whole process);
- perplexity: held-out Shakespeare (``llmkit.data``), llama-perplexity's protocol on both sides
  (chunks of ``n_ctx``, second halves scored; ``benchmarks/llama_cpp_tools.py``), the same text
  file for every row;
- TTFT: a ``prompt``-token prompt to the first token, batch 1;
- decode: batch-1 tokens/s after that prompt, ``(t(1 + n) - t(1)) / n``, greedy, compiled decode
  step; llama.cpp: ``llama-bench`` pp``prompt`` and tg``n`` at depth ``prompt``.

Timings mean something only on an otherwise idle machine; ``--no-timing`` leaves them out. The
full run writes the table and the perplexity-vs-size plot (docs/images/quant_ppl_size.png) into
docs/quantization.md and README.md, between ``quant-table`` markers.

    .venv/bin/python benchmarks/quant.py [--quick] [--no-timing] [--threads 2] [--models smollm2,speedrun]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import llama_cpp_tools as lc

ROOT = Path(__file__).resolve().parent.parent
SPEEDRUN = Path.home() / ".cache" / "llmkit" / "speedrun" / "nano-quant"
GROUPED = ("int4", "gptq", "awq")  # schemes with a group_size option
# rows that are a scheme with non-default options: row name -> (scheme, options)
VARIANTS = {"int8_a8": ("int8", {"int8_activations": True})}  # llama.cpp's Q8 activations (as its Q8_0 rows)


@dataclass(frozen=True)
class Subject:
    """One model of the table and how it is measured."""

    label: str
    group_size: int  # int4/GPTQ/AWQ groups: must divide every quantised layer's in_features
    n_ctx: int  # perplexity chunk (<= the model's context)
    chunks: int  # perplexity chunks (quick: a quarter)
    prompt: int  # TTFT prompt and decode depth (prompt + new tokens <= the model's context)


SUBJECTS = {
    "smollm2": Subject("SmolLM2-135M-Instruct", 64, 512, 8, 512),  # K = 576, 1536: groups of 32 or 64
    "speedrun": Subject("speedrun nano (1.3M)", 32, 256, 32, 256),  # K = 128, 352: groups of 32
}


def speedrun_model(minutes: float = 6.0) -> Path:
    """The speedrun's pretrained nano model (an HF directory with its tokenizer), trained once and cached."""
    path = SPEEDRUN / "pretrain" / "model"
    if not (path / "config.json").exists():
        from llmkit.speedrun import SpeedrunConfig, speedrun

        speedrun(SpeedrunConfig(minutes=minutes, out=str(SPEEDRUN)))
    return path


def source(name: str) -> Path:
    from llmkit.io.pull import pull

    return pull("smollm2-135m-instruct") if name == "smollm2" else speedrun_model()


def held_out_file(tokenizer, subject: Subject, chunks: int, out: Path) -> Path:
    """The first held-out Shakespeare characters holding ``chunks`` chunks (and a little more), as a file."""
    from llmkit.eval.perplexity import resolve_text

    text = resolve_text("shakespeare")[0]
    n_chars = 1000
    while len(lc.eval_ids(tokenizer, text[:n_chars])) < chunks * subject.n_ctx + 16:
        n_chars *= 2
    out.write_text(text[:n_chars])
    return out


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def touch_pages(model) -> None:
    """Read one value per 4 KiB page of every tensor: weights loaded from a memory map are resident only once read.

    The module's own tensors, not ``state_dict()``: an int4 layer's state dict converts its weights from
    the CPU kernel's layout back to the portable one, and those temporaries stayed resident (~95 MiB
    on SmolLM2), which the int4 rows' memory used to include.
    """
    for t in itertools.chain(model.parameters(), model.buffers()):
        flat = t.detach().reshape(-1).view(torch.uint8) if t.dtype != torch.uint8 else t.reshape(-1)
        flat[::4096].sum()


def file_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.iterdir())


# ----- the child process: load one saved llmkit row and measure it -----
def measure_llmkit(path: Path, subject: Subject, text_file: Path, chunks: int, n_new: int, timing: bool) -> dict:
    from llmkit.generate import generate_tokens, load_model_and_tokenizer

    before = rss_bytes()
    model, tokenizer = load_model_and_tokenizer(path)
    touch_pages(model)
    result = {"memory": rss_bytes() - before}
    bos = tokenizer.bos_id if lc.adds_bos(tokenizer) else None
    result["ppl"] = lc.chunked_perplexity(model, lc.eval_ids(tokenizer, text_file.read_text()), subject.n_ctx,
                                          chunks, bos)
    if timing:
        def run(k: int) -> float:
            start = time.perf_counter()
            generate_tokens(model, prompt, max_new_tokens=k, compile=True)  # no stop ids: exactly k tokens
            return time.perf_counter() - start

        g = torch.Generator().manual_seed(0)
        prompt = torch.randint(100, model.cfg.vocab_size, (1, subject.prompt), generator=g)
        run(2)  # warm-up and compilation
        ttft = min(run(1) for _ in range(3))
        full = min(run(n_new + 1) for _ in range(3))
        result |= {"ttft": ttft, "tok_s": n_new / (full - ttft)}
    return result


# ----- the parent: build each row, then measure it -----
def build_rows(name: str, subject: Subject, schemes: list[str], out: Path) -> dict[str, Path]:
    """Save fp32, bf16 and each scheme (quantised from bf16) under ``out``; row name -> directory."""
    from llmkit.generate import load_model_and_tokenizer
    from llmkit.quant import QUANT_SCHEMES, quantize
    from llmkit.quant.calibrate import calibration_ids

    rows = {}
    for row in ["fp32", "bf16", *schemes]:
        model, tokenizer = load_model_and_tokenizer(source(name), dtype=torch.float32 if row == "fp32" else
                                                    torch.bfloat16)
        scheme, options = VARIANTS.get(row, (row, {}))
        if scheme in QUANT_SCHEMES:
            start = time.perf_counter()
            calib = calibration_ids(tokenizer, "shakespeare", 32, 256) if QUANT_SCHEMES[scheme].calibrated else None
            options = options | ({"group_size": subject.group_size} if scheme in GROUPED else {})
            quantize(model, scheme, calib, **options)
            print(f"[{name} {row}] quantised in {time.perf_counter() - start:.0f} s", flush=True)
        rows[row] = out / row
        model.save_pretrained(rows[row])
        tokenizer.save_pretrained(rows[row])
    return rows


def llama_cpp_files(name: str, out: Path) -> dict[str, Path]:
    """Our f32 GGUF export of the model and llama-quantize's Q8_0/Q4_0/Q4_1 of it (empty without the binary)."""
    if lc.tool("llama-quantize") is None:
        return {}
    from llmkit.generate import load_model_and_tokenizer
    from llmkit.io.gguf import export_gguf
    from llmkit.tokenizer.gguf_format import read_gguf_metadata

    model, tokenizer = load_model_and_tokenizer(source(name))
    meta = read_gguf_metadata(source(name)) if name == "smollm2" else lc.gguf_tokenizer_metadata(tokenizer)
    f32 = out / "F32.gguf"
    export_gguf(model, f32, "f32", tokenizer_metadata=meta)
    return {"F32": f32, **{ftype: lc.quantize(f32, out / f"{ftype}.gguf", ftype) for ftype in lc.FTYPES}}


def measure_llama_cpp(path: Path, subject: Subject, text_file: Path, chunks: int, n_new: int, threads: int,
                      timing: bool) -> dict:
    result = {"memory": lc.weights_rss(path, threads),
              "ppl": lc.llama_perplexity(path, text_file, subject.n_ctx, chunks, threads)}
    return result | (lc.llama_bench(path, threads, subject.prompt, n_new) if timing else {})


def run_subject(name: str, schemes: list[str], args: argparse.Namespace) -> list[dict]:
    subject = SUBJECTS[name]
    chunks = subject.chunks // 4 if args.quick else subject.chunks
    n_new = 16 if args.quick else 64
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from llmkit.tokenizer import Tokenizer

        text_file = held_out_file(Tokenizer.from_pretrained(source(name)), subject, chunks, tmp / "held_out.txt")
        for row, path in build_rows(name, subject, schemes, tmp).items():
            cmd = [sys.executable, __file__, "--measure", path, "--model", name, "--text", text_file,
                   "--chunks", chunks, "--new-tokens", n_new, "--threads", args.threads]
            cmd += ["--no-timing"] if args.no_timing else []
            proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"[{name} {row}] failed (exit status {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
                continue
            results.append({"model": name, "format": row, "engine": "llmkit", "size": file_bytes(path),
                            **json.loads(line[7:])})
            print(f"[{name} {row}] {results[-1]}", flush=True)
        for row, path in llama_cpp_files(name, tmp).items():
            try:
                r = measure_llama_cpp(path, subject, text_file, chunks, n_new, args.threads, not args.no_timing)
            except RuntimeError as e:  # e.g. llama-perplexity's log losing its last lines on a loaded machine
                print(f"[{name} llama.cpp {row}] failed: {e}", flush=True)
                continue
            results.append({"model": name, "format": row, "engine": "llama.cpp", "size": file_bytes(path), **r})
            print(f"[{name} llama.cpp {row}] {results[-1]}", flush=True)
    return results


# ----- output -----
def table(results: list[dict], args: argparse.Namespace) -> str:
    """The results as one markdown table, perplexity also relative to the model's bf16 row."""
    bf16 = {r["model"]: r["ppl"] for r in results if r["format"] == "bf16" and r["engine"] == "llmkit"}
    lines = ["| model | format | engine | file (MiB) | memory (MiB) | perplexity | vs bf16 | TTFT (ms) | decode b1 (tok/s) |",
             "|---|---|---|--:|--:|--:|--:|--:|--:|"]
    for r in results:
        rel = f"{r['ppl'] / bf16[r['model']] - 1:+.2%}" if r["model"] in bf16 else "-"
        ttft = f"{r['ttft'] * 1e3:.0f}" if "ttft" in r else "-"
        tok_s = f"{r['tok_s']:.1f}" if "tok_s" in r else "-"
        lines.append(f"| {SUBJECTS[r['model']].label} | {r['format']} | {r['engine']} | {r['size'] / 2**20:.1f} | "
                     f"{r['memory'] / 2**20:.1f} | {r['ppl']:.3f} | {rel} | {ttft} | {tok_s} |")
    timing = ("timings not measured (--no-timing)" if args.no_timing else
              f"batch-1 TTFT and decode with {args.threads} threads, compiled decode step")
    caption = (f"torch {torch.__version__}, llama.cpp from llama-cpp-python {lc.VERSION}; schemes from bf16, "
               f"int4/GPTQ/AWQ in groups of {SUBJECTS['smollm2'].group_size} (SmolLM2) / "
               f"{SUBJECTS['speedrun'].group_size} (speedrun); int8_a8 is int8 with int8_activations (x rounded "
               f"to int8 per 32 features, as llama.cpp's Q8_0 rows do); perplexity on held-out Shakespeare, "
               f"llama-perplexity's protocol ({', '.join(f'{s.chunks} x {s.n_ctx}' for s in SUBJECTS.values())} "
               f"tokens); {timing}.")
    return "\n".join(lines) + "\n\n" + caption + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in results))
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for engine, marker in (("llmkit", "o"), ("llama.cpp", "s")):
            rows = [r for r in results if r["model"] == model and r["engine"] == engine]
            ax.scatter([r["size"] / 2**20 for r in rows], [r["ppl"] for r in rows], marker=marker, label=engine)
            for r in rows:
                ax.annotate(r["format"], (r["size"] / 2**20, r["ppl"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.set(title=SUBJECTS[model].label, xlabel="file size (MiB)", ylabel="held-out perplexity", xscale="log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_between_markers(path: Path, text: str, marker: str = "quant-table") -> None:
    """Replace what lies between ``<!-- marker -->`` and ``<!-- /marker -->`` in ``path``."""
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    doc = path.read_text()
    if start not in doc or end not in doc:
        print(f"{path}: no {marker} markers; table not written there", flush=True)
        return
    head, rest = doc.split(start, 1)
    path.write_text(f"{head}{start}\n{text}{end}{rest.split(end, 1)[1]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a quarter of the perplexity chunks, 16 new tokens, no docs")
    ap.add_argument("--no-timing", action="store_true", help="leave out TTFT and decode speed")
    ap.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads")
    ap.add_argument("--models", default="smollm2,speedrun", help=f"comma-separated subset of {', '.join(SUBJECTS)}")
    ap.add_argument("--schemes", default="", help="comma-separated subset of QUANT_SCHEMES and VARIANTS (default: all)")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: measure one saved row
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--text", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--chunks", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--new-tokens", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.measure:
        result = measure_llmkit(args.measure, SUBJECTS[args.model], args.text, args.chunks, args.new_tokens,
                                not args.no_timing)
        print("RESULT " + json.dumps(result))
        return

    from llmkit.quant import QUANT_SCHEMES

    default = [row for name in QUANT_SCHEMES for row in [name, *(v for v, (s, _) in VARIANTS.items() if s == name)]]
    schemes = args.schemes.split(",") if args.schemes else default
    models = args.models.split(",")
    if unknown := sorted(set(schemes) - set(default)) + sorted(set(models) - set(SUBJECTS)):
        ap.error(f"unknown schemes or models {unknown}")
    results = [r for name in models for r in run_subject(name, schemes, args)]
    if not lc.tool("llama-quantize"):
        print("llama.cpp rows skipped: run benchmarks/build_llama_server.sh to build its tools", flush=True)
    out = Path.home() / ".cache" / "llmkit" / "bench" / f"quant{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args) | {"subjects": {k: asdict(v) for k, v in SUBJECTS.items()}},
                               "results": results}, indent=1, default=str))
    text = table(results, args)
    print("\n" + text + f"\nresults: {out}")
    if not args.quick and not args.schemes and set(models) == set(SUBJECTS):  # only a full table replaces the docs
        png = ROOT / "docs" / "images" / "quant_ppl_size.png"
        plot(results, png)
        for doc in (ROOT / "docs" / "quantization.md", ROOT / "README.md"):
            image = f"\n![held-out perplexity against file size per scheme]({os.path.relpath(png, doc.parent)})\n"
            write_between_markers(doc, text + image)


if __name__ == "__main__":
    main()
