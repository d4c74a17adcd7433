"""Prefill and batch-1 decode throughput of SmolLM2-135M: llmkit vs transformers, eager, same run.

Both models hold the same (random) weights in the SmolLM2-135M shape: speed does
not depend on the values, and no download is needed. Decode is a plain
token-by-token loop with each library's KV cache (ours: static cache; HF:
DynamicCache), greedy, no torch.compile: this measures the model forward.
`benchmarks/generate.py` measures the full generation loop.

    .venv/bin/python benchmarks/forward.py [--prompt 512] [--decode 64] [--threads N]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_ours(model, ids, n_decode, repeats):
    t = ids.shape[1]

    @torch.inference_mode()
    def prefill():
        model(ids)

    @torch.inference_mode()
    def decode():
        model.setup_caches(1, t + n_decode)
        tok = model(ids, input_pos=torch.arange(t))[:, -1:].argmax(-1)
        start = time.perf_counter()
        for i in range(n_decode):
            tok = model(tok, input_pos=torch.tensor([t + i]))[:, -1:].argmax(-1)
        return time.perf_counter() - start

    p = _best(prefill, repeats)
    d = min(decode() for _ in range(repeats))
    model.clear_caches()
    return t / p, n_decode / d


def bench_hf(model, ids, n_decode, repeats):
    from transformers import DynamicCache

    t = ids.shape[1]

    @torch.inference_mode()
    def prefill():
        model(ids, use_cache=False)

    @torch.inference_mode()
    def decode():
        cache = DynamicCache()
        out = model(ids, past_key_values=cache, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(n_decode):
            out = model(tok, past_key_values=cache, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
        return time.perf_counter() - start

    return t / _best(prefill, repeats), n_decode / min(decode() for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    from llmkit import CausalLM
    from llmkit.presets import get_preset

    cfg = get_preset("smollm2-135m")
    hf_cfg = transformers.LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
                                      num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                                      num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.max_seq_len,
                                      rope_theta=cfg.rope_theta, tie_word_embeddings=True, rms_norm_eps=cfg.norm_eps)
    torch.manual_seed(0)
    hf32 = transformers.LlamaForCausalLM(hf_cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        hf32.save_pretrained(d)
        ours32 = CausalLM.from_pretrained(d)
    ids = torch.randint(0, cfg.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    rows = []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ours = ours32.to(dtype)
        hf = hf32.to(dtype)
        o_pre, o_dec = bench_ours(ours, ids, args.decode, args.repeats)
        h_pre, h_dec = bench_hf(hf, ids, args.decode, args.repeats)
        rows.append((name, "prefill tok/s", o_pre, h_pre))
        rows.append((name, "decode tok/s (batch 1)", o_dec, h_dec))
    print(f"SmolLM2-135M shape, prompt {args.prompt}, decode {args.decode}, torch threads {torch.get_num_threads()}, "
          f"transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"| dtype | metric | llmkit | transformers | ratio |\n|---|---|---:|---:|---:|")
    for dtype, metric, ours_v, hf_v in rows:
        print(f"| {dtype} | {metric} | {ours_v:.1f} | {hf_v:.1f} | {ours_v / hf_v:.2f}x |")


if __name__ == "__main__":
    main()
