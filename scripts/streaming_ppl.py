"""Perplexity vs position over a long stream: StreamingLLM (sinks + window) against the plain sliding window.

Concatenates a corpus (default: Shakespeare, offline after the first fetch)
into one token stream and scores every token three ways with the same model:
full attention (when the stream fits the model's context), StreamingLLM with
4 sink tokens and a window of W, and the sliding window of W + 4 without
sinks (the same cache size). Writes a PNG of the running perplexity per
position bucket and prints a table; the numbers in docs/long-context.md come
from this script.

Memory: the process's resident set (``/proc/self/statm``) is logged with
progress every 1,024 tokens and its maximum over each run printed; with a
constant-size cache it stops growing once the cache is full. ``--chunk k``
feeds k tokens per forward once the cache is full (see
:class:`llmkit.longctx.StreamingLLM`): the long 100k-token runs use it.

    .venv/bin/python scripts/streaming_ppl.py [--model smollm2-135m-instruct] [--tokens 4096] \
        [--window 252] [--chunk 1] [--out docs/images/streaming_ppl.png]
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from llmkit.data.corpora import load_corpus
from llmkit.generate import load_model_and_tokenizer
from llmkit.longctx import streaming_nll


def stream_ids(tokenizer, corpus: str, n: int) -> torch.Tensor:
    ids: list[int] = []
    for doc in load_corpus(corpus):
        ids += tokenizer.encode(doc.text, add_special_tokens=False)
        if len(ids) > n:
            break
    return torch.tensor([ids[:n]])


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@torch.no_grad()
def full_nll(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids).float()[:, :-1]
    return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--corpus", default="shakespeare")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--window", type=int, default=252, help="recent tokens kept (the sinks come on top)")
    p.add_argument("--sinks", type=int, default=4)
    p.add_argument("--bucket", type=int, default=256, help="positions per plotted point")
    p.add_argument("--chunk", type=int, default=1, help="tokens per forward once the cache is full")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/images/streaming_ppl.png")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(args.model)
    ids = stream_ids(tokenizer, args.corpus, args.tokens)
    runs = {}
    if ids.shape[1] <= model.cfg.max_seq_len:
        runs["full attention"] = full_nll(model, ids)
    size = args.sinks + args.window
    for name, sinks in ((f"StreamingLLM ({args.sinks} sinks + {args.window})", args.sinks),
                        (f"sliding window ({size}, no sinks)", 0)):
        start, rss = time.perf_counter(), []

        def progress(done: int) -> None:
            rss.append(rss_mib())
            print(f"  {name}: {done} tokens, {done / (time.perf_counter() - start):.1f} tok/s, "
                  f"RSS {rss[-1]:.0f} MiB", flush=True)

        runs[name] = streaming_nll(model, ids, window=size - sinks, sinks=sinks, chunk=args.chunk, progress=progress)
        print(f"{name}: {ids.shape[1] / (time.perf_counter() - start):.1f} tok/s, cache {size} slots, "
              f"RSS after 1k tokens {rss[0]:.0f} MiB, max {max(rss):.0f} MiB", flush=True)

    edges = list(range(0, ids.shape[1] - 1, args.bucket))
    print(f"\nperplexity per {args.bucket}-token bucket ({args.model}, {ids.shape[1]} tokens of {args.corpus})")
    print("| start | " + " | ".join(runs) + " |\n|---|" + "---|" * len(runs))
    table = {name: [math.exp(nll[0, e:e + args.bucket].mean().item()) for e in edges] for name, nll in runs.items()}
    for i, e in enumerate(edges):
        print(f"| {e} | " + " | ".join(f"{table[n][i]:.2f}" for n in runs) + " |")
    print("| all | " + " | ".join(f"{math.exp(nll.mean().item()):.2f}" for nll in runs.values()) + " |")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, ppl in table.items():
        ax.plot([e + args.bucket / 2 for e in edges], ppl, marker=".", label=name)
    ax.axvline(size, color="grey", ls=":", lw=1)
    ax.set(xlabel="position in the stream", ylabel=f"perplexity (per {args.bucket} tokens)", yscale="log",
           title=f"{args.model}: {ids.shape[1]:,} tokens, a {size}-slot cache"
                 + (f", chunks of {args.chunk}" if args.chunk > 1 else ""))
    ax.legend()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
