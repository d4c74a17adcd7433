"""KV-cache quantization on SmolLM2-135M-Instruct: perplexity cost and decode speed at long context.

Rows: fp32 and bf16 weights, each with its own-dtype KV cache ("auto"), int8 and fp8
(:mod:`llmkit.quant.kv`). Measured:

- KV bytes/token: what one token takes in the cache over all layers (codes plus scales);
- perplexity: held-out Shakespeare (``llmkit.data``), llama-perplexity's protocol: the text is
  cut into chunks of ``--ctx`` tokens, each chunk is prefilled through the static cache of that
  kv_cache_dtype and its second half is scored (every scored token sees at least ``ctx / 2``
  tokens of context). Every query reads the K/V as the cache stores them, its own included, so
  these logits are the ones token-by-token decoding produces (tests/model/test_kv_quant.py);
- logit error: the largest |logit - logit with the row's "auto" cache| over the scored tokens;
- decode (with ``--timing``): batch-1 greedy tokens/s after a ``--ctx``-token prompt,
  ``(t(1 + n) - t(1)) / n``, compiled decode step (the C++ kernel reads the quantized cache in
  place), best of ``--repeats``; the kv_cache_dtypes take turns so a neighbour's burst of load hits
  one round, not one row. Timings mean something only on an otherwise idle machine.

    .venv/bin/python benchmarks/kv_quant.py [--chunks 4] [--ctx 2048] [--timing] [--threads 2] [--quick]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

KV_DTYPES = ("auto", "int8", "fp8")
WEIGHTS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def held_out_ids(tokenizer, n_tokens: int) -> torch.Tensor:
    """The first ``n_tokens`` tokens of held-out Shakespeare."""
    from llmkit.eval.perplexity import resolve_text

    text = resolve_text("shakespeare")[0]
    ids = tokenizer.encode(text[:n_tokens * 8])  # ~4 characters a token: plenty
    if len(ids) < n_tokens:
        raise ValueError(f"held-out Shakespeare gives only {len(ids)} tokens, {n_tokens} wanted")
    return torch.tensor(ids[:n_tokens])


@torch.no_grad()
def chunk_logits(model, chunk: torch.Tensor, kv: str) -> torch.Tensor:
    """(ctx / 2, V) float32 logits of a chunk's second half, prefilled through a ``kv`` static cache."""
    ctx = chunk.numel()
    model.setup_caches(1, ctx, kv_cache_dtype=kv)
    logits = model(chunk[None], input_pos=torch.arange(ctx), logits_to_keep=ctx // 2 + 1)[0, :-1]
    return logits.float()


def perplexity_rows(model, ids: torch.Tensor, ctx: int) -> dict[str, tuple[float, float]]:
    """kv_cache_dtype -> (perplexity, largest logit difference from "auto") over the chunks of ``ids``."""
    nll = {kv: 0.0 for kv in KV_DTYPES}
    err = {kv: 0.0 for kv in KV_DTYPES}
    n = 0
    for c in range(ids.numel() // ctx):
        chunk = ids[c * ctx:(c + 1) * ctx]
        targets = chunk[ctx // 2:]
        reference = None
        for kv in KV_DTYPES:
            logits = chunk_logits(model, chunk, kv)
            reference = logits if reference is None else reference
            nll[kv] += F.cross_entropy(logits, targets, reduction="sum").item()
            err[kv] = max(err[kv], (logits - reference).abs().max().item())
        n += targets.numel()
        print(f"  chunk {c + 1}: " + ", ".join(f"{kv} {math.exp(nll[kv] / n):.4f}" for kv in KV_DTYPES), flush=True)
    model.clear_caches()
    return {kv: (math.exp(nll[kv] / n), err[kv]) for kv in KV_DTYPES}


def decode_rows(model, prompt: torch.Tensor, n: int, repeats: int) -> dict[str, float]:
    """kv_cache_dtype -> batch-1 decode tokens/s after ``prompt``, compiled step, best of ``repeats``."""
    from llmkit.generate import generate_tokens

    def run(kv: str, tokens: int) -> float:
        start = time.perf_counter()
        generate_tokens(model, prompt[None], max_new_tokens=tokens, compile=True, kv_cache_dtype=kv)
        return time.perf_counter() - start

    for kv in KV_DTYPES:
        run(kv, n + 1)  # compiles this cache's decode step
    first = {kv: [] for kv in KV_DTYPES}
    full = {kv: [] for kv in KV_DTYPES}
    for _ in range(repeats):
        for kv in KV_DTYPES:
            first[kv].append(run(kv, 1))
            full[kv].append(run(kv, n + 1))
    return {kv: n / (min(full[kv]) - min(first[kv])) for kv in KV_DTYPES}


def kv_bytes_per_token(model, kv: str) -> int:
    from llmkit.model.paged import PagedKVCache

    cfg = model.cfg
    return cfg.n_layers * PagedKVCache.slot_bytes(cfg.kv_heads, cfg.head_size, cfg.head_size, model.dtype, kv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ctx", type=int, default=2048, help="tokens per perplexity chunk and decode prompt")
    ap.add_argument("--chunks", type=int, default=4, help="perplexity chunks")
    ap.add_argument("--timing", action="store_true", help="also time decoding (on an idle machine only)")
    ap.add_argument("--new-tokens", type=int, default=64, help="decoded tokens per timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--weights", default="fp32,bf16", help="weight dtypes (fp32, bf16)")
    ap.add_argument("--quick", action="store_true", help="1 chunk of 512 tokens, 16 decoded tokens, 1 repeat")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.ctx, args.chunks, args.new_tokens, args.repeats = 512, 1, 16, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    from llmkit.generate import load_model_and_tokenizer
    from llmkit.io.pull import pull

    path = pull("smollm2-135m-instruct")
    rows = []
    for weights in args.weights.split(","):
        model, tokenizer = load_model_and_tokenizer(path, dtype=WEIGHTS[weights])
        ids = held_out_ids(tokenizer, args.ctx * args.chunks)
        print(f"{weights} weights: perplexity over {args.chunks} x {args.ctx} tokens", flush=True)
        ppl = perplexity_rows(model, ids, args.ctx)
        speed = decode_rows(model, ids[:args.ctx], args.new_tokens, args.repeats) if args.timing else {}
        for kv in KV_DTYPES:
            rows.append(dict(weights=weights, kv_cache_dtype=kv, kv_bytes_per_token=kv_bytes_per_token(model, kv),
                             perplexity=ppl[kv][0], max_logit_diff=ppl[kv][1], decode_tok_s=speed.get(kv)))

    print(f"\nSmolLM2-135M-Instruct, held-out Shakespeare, {args.chunks} chunks of {args.ctx} tokens "
          "(second halves scored)\n")
    print("| weights | KV cache | KV bytes/token | perplexity | vs auto | max logit diff | decode tok/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["weights"] == r["weights"] and b["kv_cache_dtype"] == "auto")
        speed = f"{r['decode_tok_s']:.1f}" if r["decode_tok_s"] else "-"
        print(f"| {r['weights']} | {r['kv_cache_dtype']} | {r['kv_bytes_per_token']:,} | {r['perplexity']:.4f} | "
              f"{100 * (r['perplexity'] / base['perplexity'] - 1):+.2f}% | {r['max_logit_diff']:.3f} | {speed} |")
    if args.out:
        args.out.write_text(json.dumps(dict(ctx=args.ctx, chunks=args.chunks, rows=rows), indent=1))


if __name__ == "__main__":
    main()
