"""Perplexity vs length for every RoPE scaling method on a model evaluated beyond its trained length.

Loads a checkpoint trained at ``--trained_len`` tokens, rebuilds it under each
of llmkit's ``ROPE_SCALINGS`` with ``rope_original_max_seq_len = trained_len``
and ``rope_factor = length / trained_len`` (each method at the factor that
maps the evaluated length onto the trained one; ``none`` is plain
extrapolation), and scores non-overlapping windows of each length from
held-out text: the mean NLL over all positions of a window, so longer windows
include every shorter distance. Writes a PNG and prints a table; ``--as_is``
scores a checkpoint under its own RoPE config instead (after a PI or YaRN
fine-tune). The numbers in docs/long-context.md come from this recipe:

    llmkit train recipes/tiny-shakespeare.yaml --model nano --seq_len 64 --batch_size 16 --max_steps 400 \
        --out_dir runs/rope64
    .venv/bin/python scripts/rope_scaling_ppl.py --model runs/rope64/model --trained_len 64 \
        --lengths 64 128 256 512 1024 2048
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from llmkit import CausalLM
from llmkit.data.corpora import load_corpus
from llmkit.data.split import split_documents
from llmkit.generate import load_model_and_tokenizer
from llmkit.model.rope import ROPE_SCALINGS


def held_out_ids(tokenizer, corpus: str, n: int) -> list[int]:
    """The first ``n`` tokens of the corpus's validation documents (the split the speedrun holds out)."""
    _, val = split_documents(load_corpus(corpus), corpus)
    ids: list[int] = []
    for doc in val:
        ids += tokenizer.encode(doc.text, add_special_tokens=False)
        if len(ids) >= n:
            break
    return ids[:n]


@torch.no_grad()
def window_ppl(model: CausalLM, ids: list[int], length: int, batch: int = 4) -> float:
    """exp(mean NLL) over non-overlapping windows of ``length`` tokens, every position scored."""
    rows = torch.tensor(ids[:len(ids) // length * length]).view(-1, length)
    total, count = 0.0, 0
    for i in range(0, rows.shape[0], batch):
        x = rows[i:i + batch]
        logits = model(x)[:, :-1].float()
        total += F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="sum").item()
        count += x[:, 1:].numel()
    return math.exp(total / count)


def rescaled(model: CausalLM, method: str, trained_len: int, length: int) -> CausalLM:
    """``model``'s weights under RoPE scaling ``method`` stretched from ``trained_len`` to ``length``."""
    factor = max(length / trained_len, 1.0)
    cfg = model.cfg.replace(rope_scaling=method, rope_factor=factor if method != "none" else 1.0,
                            rope_original_max_seq_len=trained_len, max_seq_len=max(length, model.cfg.max_seq_len))
    with torch.device("meta"):
        out = CausalLM(cfg)
    out.load_state_dict(model.state_dict(), assign=True)
    out.rebuild_buffers(model.device)
    return out.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint directory or .gguf (with its tokenizer)")
    p.add_argument("--trained_len", type=int, required=True, help="context the model was trained at")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    p.add_argument("--corpus", default="shakespeare")
    p.add_argument("--tokens", type=int, default=16384, help="held-out tokens scored per length")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/images/rope_scaling_ppl.png")
    p.add_argument("--as_is", action="store_true",
                   help="score the checkpoint with its own RoPE config only (e.g. after a PI/YaRN fine-tune); no plot")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base, tokenizer = load_model_and_tokenizer(args.model)
    ids = held_out_ids(tokenizer, args.corpus, args.tokens)
    path = Path(args.model)
    name = path.parent.name if path.name == "model" else path.name  # a training run's model/ is named by its run
    if args.as_is:
        cfg = base.cfg
        print(f"| {name} ({cfg.rope_scaling}, factor {cfg.rope_factor:g}) | "
              + " | ".join(f"{window_ppl(base, ids, n):.2f}" for n in args.lengths) + " |")
        return
    table = {m: [window_ppl(rescaled(base, m, args.trained_len, n), ids, n) for n in args.lengths]
             for m in ROPE_SCALINGS}

    print(f"\nperplexity of {len(ids)} held-out {args.corpus} tokens in windows of each length "
          f"({name}, trained at {args.trained_len})")
    print("| method | " + " | ".join(map(str, args.lengths)) + " |\n|---|" + "---|" * len(args.lengths))
    for m, ppl in table.items():
        print(f"| {m} | " + " | ".join(f"{x:.2f}" for x in ppl) + " |")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for m, ppl in table.items():
        ax.plot(args.lengths, ppl, marker="o", label=m)
    ax.axvline(args.trained_len, color="grey", ls=":", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="evaluation length (tokens)", ylabel="perplexity",
           title=f"RoPE scaling beyond the trained {args.trained_len} tokens ({name})")
    ax.set_xticks(args.lengths, [str(n) for n in args.lengths])
    ax.legend(fontsize=8)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
