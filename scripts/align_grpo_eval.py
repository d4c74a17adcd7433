"""Held-out accuracy on the built-in arithmetic task, greedy, with a 95% interval (docs/alignment.md, GRPO).

    python scripts/align_grpo_eval.py [--adapter OUT/adapter | --checkpoint OUT/train/checkpoints/step_N]
                                      [--n 128] [--batch 32]

Answers ``--n`` validation sums of :func:`llmkit.align.builtin.arithmetic_set` (the split GRPO never
trains on, same seed as ``llmkit align``) with SmolLM2-135M-Instruct, optionally with a LoRA adapter, and
prints the share judged correct by :func:`~llmkit.align.builtin.parse_answer`, the share in the strict
``Answer: N`` form, the mean completion length, and the Wilson 95% interval of the accuracy.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from llmkit.align.builtin import ANSWER, arithmetic_reward, arithmetic_set
from llmkit.align.online import sample
from llmkit.generate import load_model_and_tokenizer
from llmkit.io.pull import pull
from llmkit.peft import apply_lora, load_adapter


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` (sound near 0 and 1, unlike the normal one)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", default="", help="a LoRA adapter directory (an `llmkit align` OUT/adapter)")
    ap.add_argument("--checkpoint", default="", help="a LoRA run's checkpoint directory (r=16, alpha=32, the "
                    "`llmkit align` defaults): evaluates a run stopped before its export")
    ap.add_argument("--n", type=int, default=128, help="held-out problems")
    ap.add_argument("--batch", type=int, default=32, help="problems per generate call")
    ap.add_argument("--seed", type=int, default=1337, help="the run's --seed")
    ap.add_argument("--max_new_tokens", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(pull("smollm2-135m-instruct"))
    model = model.float()
    if args.adapter:
        model = load_adapter(model, args.adapter)
    elif args.checkpoint:
        model = apply_lora(model, "all-linear", 16, 32.0)
        state = load_file(str(Path(args.checkpoint) / "model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any("lora" in k for k in missing):
            raise SystemExit(f"{args.checkpoint}: not a LoRA r=16 run of this model ({(missing + unexpected)[:4]})")
    model.eval()
    val = arithmetic_set(args.n, "val", seed=args.seed)
    texts, ids = [], []
    for i in range(0, len(val), args.batch):
        t, d = sample(model, tokenizer, val[i:i + args.batch], n=1, max_new_tokens=args.max_new_tokens,
                      temperature=0.0, seed=None)
        texts, ids = texts + t, ids + d
        print(f"  answered {len(texts)}/{len(val)}", flush=True)
    correct = sum(arithmetic_reward(t, r["answer"]) >= 1.0 for t, r in zip(texts, val))
    strict = sum(bool(ANSWER.search(t)) for t in texts)
    lo, hi = wilson(correct, len(val))
    print(f"model={args.adapter or args.checkpoint or 'base'} n={len(val)} "
          f"accuracy={correct / len(val):.3f} (95% CI {lo:.3f}-{hi:.3f}) strict_format={strict / len(val):.3f} "
          f"mean_len={sum(map(len, ids)) / len(ids):.1f}")
    for r, t in list(zip(val, texts))[:3]:
        print(f"  {r['prompt'][-1]['content'].split('?')[0]}? -> {t!r}")


if __name__ == "__main__":
    main()
