"""llama.cpp's command-line tools as the peer of llmkit's quantisation benchmarks, scored the same way.

The binaries (``llama-quantize``, ``llama-perplexity``, ``llama-bench``) are built from the sources
vendored in llama-cpp-python by ``benchmarks/build_llama_server.sh`` into
``~/.cache/llmkit/llama-server/<version>/``; :func:`tool` finds them (None when absent, so callers
skip their llama.cpp rows cleanly). They run with weight repacking off (``-nr`` / ``--repack 0``):
that build's AMX kernels, which repacking selects on CPUs with AMX, crash (SIGSEGV in
``ggml_backend_amx_mul_mat``) on any batch of more than one token.

Perplexity follows ``llama-perplexity``'s protocol on both sides, so both engines score the same
tokens given the same context: the text is tokenised whole (with BOS first when the vocabulary adds
one), cut into chunks of ``n_ctx`` tokens, the first token of each chunk is replaced by BOS (when
added), and only each chunk's second half is scored (``n_ctx - 1 - n_ctx // 2`` tokens, each seeing
at least ``n_ctx // 2`` tokens of context). :func:`chunked_perplexity` does this for an llmkit model;
:func:`llama_perplexity` runs the binary on the same text file.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile
from pathlib import Path

VERSION = "0.3.36"  # the llama-cpp-python release whose llama.cpp build_llama_server.sh builds
FTYPES = ("Q8_0", "Q4_0", "Q4_1")  # llama.cpp's rows in benchmarks/quant.py


def tool(name: str) -> Path | None:
    """Path of a llama.cpp binary built by build_llama_server.sh, or None when it is not there."""
    cache = Path(os.environ.get("LLMKIT_CACHE", Path.home() / ".cache" / "llmkit"))
    path = cache / "llama-server" / VERSION / name
    return path if os.access(path, os.X_OK) else None


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def quantize(src: Path, dst: Path, ftype: str, threads: int = 2) -> Path:
    """``llama-quantize src dst ftype`` (e.g. "Q4_0") from an f32/f16 GGUF; returns ``dst``."""
    _run([tool("llama-quantize"), src, dst, ftype, threads])
    return dst


def llama_perplexity(path: Path, text_file: Path, n_ctx: int, chunks: int, threads: int = 2) -> float:
    """llama.cpp's perplexity of ``path`` on the first ``chunks`` chunks of ``n_ctx`` tokens of ``text_file``."""
    for _ in range(3):  # its log is written by a thread that, on a loaded machine, can lose the last lines
        proc = _run([tool("llama-perplexity"), "-m", path, "-f", text_file, "-c", n_ctx, "-b", n_ctx,
                     "--chunks", chunks, "-t", threads, "-nr"])
        found = re.search(r"Final estimate: PPL = ([0-9.]+)", proc.stdout + proc.stderr)
        if found is not None:
            return float(found.group(1))
    raise RuntimeError(f"llama-perplexity printed no final estimate:\n{(proc.stdout + proc.stderr)[-3000:]}")


def llama_bench(path: Path, threads: int, prompt: int = 512, new: int = 64, repeats: int = 3) -> dict:
    """TTFT (s) for a ``prompt``-token prompt and batch-1 decode tok/s after it, from ``llama-bench``.

    TTFT is the prompt-processing test's time per run (pp``prompt``); decode is the generation test
    at depth ``prompt`` (tg``new`` with ``prompt`` tokens already in the cache), like llmkit's rows.
    """
    def run(*args) -> float:
        proc = _run([tool("llama-bench"), "-m", path, "-t", threads, "-r", repeats, "-o", "json", "--repack", 0, *args])
        return json.loads(proc.stdout)[0]["avg_ts"]  # tokens per second

    return {"ttft": prompt / run("-p", prompt, "-n", 0), "tok_s": run("-p", 0, "-n", new, "-d", prompt)}


def peak_rss(cmd: list) -> int:
    """Peak resident bytes of ``cmd`` run to completion, by ``/usr/bin/time``.

    Not by ``wait4`` from here: a process's max RSS counts the memory of the Python process it was
    forked from until its ``exec``; ``time`` is small, so its child's peak is the tool's own.
    """
    with tempfile.NamedTemporaryFile("r") as report:
        _run(["/usr/bin/time", "-f", "%M", "-o", report.name, *cmd])
        return int(report.read().split()[-1]) * 1024  # KiB


def weights_rss(path: Path, threads: int = 2) -> int:
    """Peak resident bytes of llama.cpp decoding one token from ``path`` (weights, a small cache, buffers)."""
    return peak_rss([tool("llama-bench"), "-m", path, "-t", threads, "-r", 1, "-p", 0, "-n", 1, "--repack", 0])


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS first (what GGUF's ``tokenizer.ggml.add_bos_token`` says)."""
    return tokenizer.bos_id is not None and tokenizer.encode("a")[:1] == [tokenizer.bos_id]


def eval_ids(tokenizer, text: str) -> list[int]:
    """``text`` tokenised as llama-perplexity does: whole, with BOS first when the tokenizer adds one."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return [tokenizer.bos_id, *ids] if adds_bos(tokenizer) else ids


def chunked_perplexity(model, ids: list[int], n_ctx: int, chunks: int, bos: int | None) -> float:
    """llama-perplexity's perplexity of ``model`` on ``ids`` (see the module docstring).

    Args:
        model: a causal LM.
        ids: the whole text's ids (:func:`eval_ids`).
        n_ctx: tokens per chunk.
        chunks: how many chunks to score (the text must hold them).
        bos: the id put first in every chunk, or None to leave chunks as cut.
    Returns:
        exp(mean NLL) over the ``chunks * (n_ctx - 1 - n_ctx // 2)`` scored tokens.
    """
    import torch

    from llmkit.eval.scoring import score_spans

    if len(ids) < chunks * n_ctx:
        raise ValueError(f"{len(ids)} tokens hold fewer than {chunks} chunks of {n_ctx}")
    rows = [ids[i * n_ctx:(i + 1) * n_ctx] for i in range(chunks)]
    if bos is not None:
        rows = [[bos, *row[1:]] for row in rows]
    with torch.no_grad():
        scores = score_spans(model, rows, [n_ctx - 1 - n_ctx // 2] * chunks, batch_size=1)
    return math.exp(-sum(s.logprob for s in scores) / sum(s.n_tokens for s in scores))


def gguf_tokenizer_metadata(tokenizer) -> dict:
    """``tokenizer.*`` GGUF keys for an llmkit byte-level BPE (a speedrun's), so llama.cpp tokenises as we do.

    The pre-tokenizer is named by what llmkit trains with (cl100k's regex = llama.cpp's "llama-bpe").
    """
    backend = json.loads(tokenizer.backend.to_str())
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    tokens = [None] * len(vocab)
    for token, i in vocab.items():
        tokens[i] = token
    special = {t["id"] for t in backend["added_tokens"] if t["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [3 if i in special else 1 for i in range(len(tokens))],
            "tokenizer.ggml.merges": merges, "tokenizer.ggml.add_bos_token": adds_bos(tokenizer)}
    for key in ("bos", "eos", "pad"):
        if (i := getattr(tokenizer, f"{key}_id", None)) is not None:
            meta[f"tokenizer.ggml.{'padding' if key == 'pad' else key}_token_id"] = i
    return meta
