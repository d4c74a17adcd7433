"""Does llama.cpp load llmkit's GGUF exports, and score them as llmkit does? SmolLM2 Q8_0 and Q4_0.

For each type, SmolLM2-135M-Instruct (dequantised from its Q4_1 file) is written by
``export_gguf(model, path, dtype)`` with the source file's tokenizer metadata, then the same file is
scored on the same held-out Shakespeare text by ``llama-perplexity`` and by llmkit (loading that
file), with llama-perplexity's protocol on both sides (``benchmarks/llama_cpp_tools.py``). Exit
status 1 when the two perplexities differ by more than ``--tolerance`` (1%), 2 without the binary.

    .venv/bin/python benchmarks/gguf_llama_check.py [--types q8_0,q4_0] [--n-ctx 512] [--chunks 8]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import llama_cpp_tools as lc

MODEL = "smollm2-135m-instruct"


def held_out_text(n_chars: int) -> str:
    from llmkit.eval.perplexity import resolve_text

    return resolve_text("shakespeare")[0][:n_chars]


def check(dtype: str, n_ctx: int, chunks: int, out: Path, threads: int = 2) -> tuple[float, float]:
    """(llmkit's, llama.cpp's) perplexity of SmolLM2 exported as ``dtype`` (written under ``out``)."""
    import torch

    from llmkit.generate import load_model_and_tokenizer
    from llmkit.io.gguf import export_gguf
    from llmkit.io.pull import pull
    from llmkit.tokenizer.gguf_format import read_gguf_metadata

    source = pull(MODEL)
    path = out / f"smollm2-135m-{dtype}.gguf"
    model, _ = load_model_and_tokenizer(source)
    export_gguf(model, path, dtype, tokenizer_metadata=read_gguf_metadata(source))
    del model
    model, tokenizer = load_model_and_tokenizer(path)  # our reading of the very file llama.cpp reads
    text = held_out_text(chunks * n_ctx * 6)  # ~3.4 characters a token: room to spare
    text_file = out / "held_out.txt"
    text_file.write_text(text)
    bos = tokenizer.bos_id if lc.adds_bos(tokenizer) else None
    torch.set_num_threads(threads)
    ours = lc.chunked_perplexity(model, lc.eval_ids(tokenizer, text), n_ctx, chunks, bos)
    theirs = lc.llama_perplexity(path, text_file, n_ctx, chunks, threads)
    return ours, theirs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="q8_0,q4_0", help="comma-separated export dtypes")
    ap.add_argument("--n-ctx", type=int, default=512, help="tokens per perplexity chunk")
    ap.add_argument("--chunks", type=int, default=8, help="chunks scored")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tolerance", type=float, default=0.01, help="largest relative perplexity difference")
    args = ap.parse_args()
    if lc.tool("llama-perplexity") is None:
        print("llama-perplexity not found: run benchmarks/build_llama_server.sh first")
        return 2
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.types.split(","):
            ours, theirs = check(dtype, args.n_ctx, args.chunks, Path(tmp), args.threads)
            diff = abs(theirs - ours) / ours
            ok &= diff <= args.tolerance
            print(f"{dtype}: llmkit {ours:.4f}  llama.cpp {theirs:.4f}  difference {diff:.3%} "
                  f"({'ok' if diff <= args.tolerance else 'FAIL'})", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
