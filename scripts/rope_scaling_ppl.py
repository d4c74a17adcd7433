"""Perplexity vs length for every RoPE scaling method on a model evaluated beyond its trained length.

Loads a checkpoint trained at ``--trained_len`` tokens, rebuilds it under each
of llmkit's ``ROPE_SCALINGS`` with ``rope_original_max_seq_len = trained_len``
and ``rope_factor = length / trained_len`` (each method at the factor that
maps the evaluated length onto the trained one; ``none`` is plain
extrapolation), and scores non-overlapping windows of each length from
held-out text: the mean NLL over all positions of a window, so longer windows
include every shorter distance (the LM head runs on slices of a window, so a
32k-token window fits in memory). With ``--passkey_depths`` it also measures
greedy passkey accuracy per method and length (:mod:`llmkit.eval.passkey`).
Writes one PNG (perplexity and, when measured, passkey accuracy vs length) and
prints the tables; ``--as_is`` scores a checkpoint under its own RoPE config
instead (after a PI or YaRN fine-tune). The numbers in docs/long-context.md
come from these recipes:

    llmkit speedrun --minutes 8 --out runs/rope256
    .venv/bin/python scripts/rope_scaling_ppl.py --model runs/rope256/pretrain/model --trained_len 256 \
        --lengths 256 512 1024 2048 4096 --passkey_depths 0.1 0.5 0.9 --passkey_lengths 512 1024 2048 4096 \
        --out docs/images/rope_scaling_speedrun.png
    llmkit train recipes/tiny-shakespeare.yaml --model nano --seq_len 64 --batch_size 16 --max_steps 400 \
        --out_dir runs/rope64
    .venv/bin/python scripts/rope_scaling_ppl.py --model runs/rope64/model --trained_len 64 \
        --lengths 64 128 256 512 1024 2048
    .venv/bin/python scripts/rope_scaling_ppl.py --model smollm2-135m-instruct --dtype bfloat16 \
        --trained_len 8192 --lengths 8192 16384 --tokens 16384 --passkey_depths 0.5 --passkey_lengths 16384
    .venv/bin/python scripts/rope_scaling_ppl.py --model smollm2-135m-instruct --dtype bfloat16 \
        --trained_len 8192 --lengths 32768 --tokens 32768 --passkey_depths 0.1 0.9 --passkey_lengths 16384

(docs/long-context.md's SmolLM2 table and PNG join these two runs.)
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from llmkit import CausalLM
from llmkit.data.corpora import load_corpus
from llmkit.data.split import split_documents
from llmkit.eval.passkey import passkey
from llmkit.generate import load_model_and_tokenizer
from llmkit.model.rope import ROPE_SCALINGS


ANSWER_ROOM = 16  # context past the evaluated length: a passkey prompt's answer tokens


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
def window_ppl(model: CausalLM, ids: list[int], length: int, batch: int = 4, logits_chunk: int = 2048) -> float:
    """exp(mean NLL) over non-overlapping windows of ``length`` tokens, every position scored.

    The LM head runs on ``logits_chunk`` positions at a time, so a 32k-token window of a 49k-word
    vocabulary never holds its full (T, vocab) logits.
    """
    rows = torch.tensor(ids[:len(ids) // length * length]).view(-1, length)
    batch = max(1, min(batch, 8192 // length))
    total, count = 0.0, 0
    head = model.lm_head
    model.lm_head = torch.nn.Identity()  # the forward then returns the final-norm hidden states
    try:
        for i in range(0, rows.shape[0], batch):
            x = rows[i:i + batch]
            hidden = model(x)[:, :-1]
            for s in range(0, hidden.shape[1], logits_chunk):
                logits = head(hidden[:, s:s + logits_chunk]).float()
                total += F.cross_entropy(logits.transpose(1, 2), x[:, s + 1:s + 1 + logits_chunk],
                                         reduction="sum").item()
            count += x[:, 1:].numel()
    finally:
        model.lm_head = head
    return math.exp(total / count)


def rescaled(model: CausalLM, method: str, trained_len: int, length: int) -> CausalLM:
    """``model``'s weights under RoPE scaling ``method`` stretched from ``trained_len`` to ``length``."""
    factor = max(length / trained_len, 1.0)
    cfg = model.cfg.replace(rope_scaling=method, rope_factor=factor if method != "none" else 1.0,
                            rope_original_max_seq_len=trained_len,
                            max_seq_len=max(length + ANSWER_ROOM, model.cfg.max_seq_len))
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
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="compute dtype (default: the file's)")
    p.add_argument("--out", default="docs/images/rope_scaling_ppl.png")
    p.add_argument("--passkey_depths", type=float, nargs="*", default=[],
                   help="also measure passkey accuracy per method and length at these needle depths (a second panel)")
    p.add_argument("--passkey_trials", type=int, default=1, help="random keys per (length, depth)")
    p.add_argument("--passkey_lengths", type=int, nargs="*", default=None,
                   help="prompt lengths of the passkey test (default: --lengths)")
    p.add_argument("--as_is", action="store_true",
                   help="score the checkpoint with its own RoPE config only (e.g. after a PI/YaRN fine-tune); no plot")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base, tokenizer = load_model_and_tokenizer(args.model, dtype=getattr(torch, args.dtype) if args.dtype else None)
    ids = held_out_ids(tokenizer, args.corpus, args.tokens)
    path = Path(args.model)
    name = path.parent.name if path.name == "model" else path.name  # a training run's model/ is named by its run
    if args.as_is:
        cfg = base.cfg
        print(f"| {name} ({cfg.rope_scaling}, factor {cfg.rope_factor:g}) | "
              + " | ".join(f"{window_ppl(base, ids, n):.2f}" for n in args.lengths) + " |")
        return
    table = {m: [logged(f"{m} at {n}", window_ppl, rescaled(base, m, args.trained_len, n), ids, n)
                 for n in args.lengths] for m in ROPE_SCALINGS}
    print(f"\nperplexity of {len(ids)} held-out {args.corpus} tokens in windows of each length "
          f"({name}, trained at {args.trained_len})")
    print_table(table, args.lengths, "{:.2f}")
    keys = {}
    if args.passkey_depths:
        key_lengths = args.passkey_lengths or args.lengths
        keys = {m: [logged(f"{m} passkey at {n}", mean_passkey, rescaled(base, m, args.trained_len, n), tokenizer, n,
                           args.passkey_depths, args.passkey_trials) for n in key_lengths] for m in ROPE_SCALINGS}
        print(f"\npasskey accuracy (depths {', '.join(map(str, args.passkey_depths))}, "
              f"{args.passkey_trials} key(s) each)")
        print_table(keys, key_lengths, "{:.2f}")
    plot(table, keys, args, name)


def logged(label: str, fn, *args):
    """``fn(*args)``, printing the result and the time it took (a long run shows its progress)."""
    start = time.perf_counter()
    value = fn(*args)
    print(f"  {label}: {value:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return value


def mean_passkey(model: CausalLM, tokenizer, length: int, depths: list[float], trials: int) -> float:
    """Greedy passkey accuracy of prompts of ``length`` tokens, averaged over the needle depths."""
    result = passkey(model, tokenizer, [length], depths, trials=trials, batch_size=1)
    return sum(result.accuracy[0]) / len(depths)


def print_table(rows: dict[str, list[float]], lengths: list[int], fmt: str) -> None:
    print("| method | " + " | ".join(map(str, lengths)) + " |\n|---|" + "---|" * len(lengths))
    for m, values in rows.items():
        print(f"| {m} | " + " | ".join(fmt.format(x) for x in values) + " |", flush=True)


def plot(table: dict[str, list[float]], keys: dict[str, list[float]], args: argparse.Namespace, name: str) -> None:
    """Perplexity vs length (and passkey accuracy vs length when measured), one PNG."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if keys else 1, figsize=(12 if keys else 7, 4), squeeze=False)
    panels = [(table, args.lengths, "perplexity", "log")]
    if keys:
        panels.append((keys, args.passkey_lengths or args.lengths, "passkey accuracy", "linear"))
    for ax, (rows, lengths, label, yscale) in zip(axes[0], panels):
        if len(lengths) == 1:  # one length: a bar per method
            ax.bar(list(rows), [values[0] for values in rows.values()], color=[f"C{i}" for i in range(len(rows))])
            ax.set(ylabel=label, title=f"at {lengths[0]} tokens")
            ax.tick_params(axis="x", labelrotation=30)
            continue
        for m, values in rows.items():
            ax.plot(lengths, values, marker="o", label=m)
        ax.axvline(args.trained_len, color="grey", ls=":", lw=1)
        ax.set(xscale="log", yscale=yscale, xlabel="evaluation length (tokens)", ylabel=label)
        if yscale == "linear":  # accuracy: the whole 0-1 range, also when every method scores 0
            ax.set_ylim(-0.05, 1.05)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if len(args.lengths) > 1:  # the perplexity panel has a line per method
        axes[0][0].legend(fontsize=8)
    fig.suptitle(f"RoPE scaling beyond the trained {args.trained_len} tokens ({name})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
