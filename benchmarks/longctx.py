"""Passkey retrieval beyond a context budget: every long-context method of llmkit on the same prompts.

The model (default SmolLM2-135M-Instruct) is given a *budget* of ``--context``
tokens, smaller than the prompts (``--length``, which the model itself can
still read, so full attention is the reference). Each method answers the
standard passkey prompts (llmkit.eval.passkey) at several needle depths:

- full attention over the whole prompt (the reference; ignores the budget),
- truncation to the last ``context`` tokens (the naive baseline),
- StreamingLLM (4 sinks + a window filling the budget),
- NBCE and PCW over pieces of the document that fit the budget with the question,
- InfLLM and kNN attention (a local window of half the budget, chunks of 1/8, the rest retrieved).

Prints one table: accuracy, the most keys one query attends to, the KV tokens
held at the end, the peak memory of tensors created while answering the first
prompt (:class:`llmkit.parallel.PeakMemory`, measured in a separate run so it
does not slow the timed ones; the weights are not counted), and prompt+answer
tokens per second (a shared CPU makes the last column noisy; compare within
one run, on an idle machine). Prompts longer than the model's context
(``--length`` beyond it) are the point of the methods; full attention then
reports ``beyond context`` instead of an answer.

    .venv/bin/python benchmarks/longctx.py [--model smollm2-135m-instruct] [--context 512] [--length 2048] \
        [--depths 0.1 0.5 0.9] [--trials 1]
    # beyond SmolLM2's 8,192-token context (~50 min on 2 Zen 4 cores with --trials 1):
    .venv/bin/python benchmarks/longctx.py --length 12288 --context 2048 --depths 0.1 0.5 0.9 --trials 2
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from llmkit.eval.passkey import KEY_DIGITS, QUESTION, answer_key, passkey_prompt
from llmkit.generate import generate_tokens, load_model_and_tokenizer
from llmkit.longctx import StreamingLLM, infllm, knn_attention, nbce_generate, pcw_generate
from llmkit.parallel import PeakMemory

NEW = KEY_DIGITS + 3  # answer tokens


def pieces(doc: list[int], size: int) -> list[list[int]]:
    return [doc[i:i + size] for i in range(0, len(doc), size)]


def run_method(name: str, model, doc: list[int], question: list[int], budget: int) -> tuple[list[int], int, int]:
    """(answer ids, most keys a query attends to, KV tokens held) for one prompt."""
    ids = doc + question
    piece = budget - len(question) - NEW
    if name == "full attention":
        out = generate_tokens(model, torch.tensor([ids]), max_new_tokens=NEW).token_ids[0]
        return out, len(ids) + NEW, len(ids) + NEW
    if name == "truncation":
        kept = ids[-(budget - NEW):]
        return generate_tokens(model, torch.tensor([kept]), max_new_tokens=NEW).token_ids[0], budget, budget
    if name == "StreamingLLM":
        stream = StreamingLLM(model, window=budget - 4, sinks=4, chunk=64)
        return stream.generate(torch.tensor([ids]), NEW)[0].tolist(), budget, budget
    if name == "NBCE":
        ctx = pieces(doc, piece)
        out = nbce_generate(model, ctx, question, NEW)
        return out, budget, sum(len(c) + len(question) + NEW for c in ctx) + len(question) + NEW
    if name == "PCW":
        ctx = pieces(doc, piece)
        # task tokens attend to every window: positions stay within the budget, keys do not
        return pcw_generate(model, ctx, question, NEW), len(ids) + NEW, len(ids) + NEW
    window, chunk = budget // 2, budget // 8
    if name == "InfLLM":
        block = 32
        topk = (budget - window - chunk - 4 - block) // block  # sinks + top-k blocks + partial block + window + chunk
        runner = infllm(model, window=window, sinks=4, block_size=block, n_repr=4, topk=topk, chunk=chunk)
    else:
        runner = knn_attention(model, k=budget - window - chunk - 4, window=window, sinks=4, chunk=chunk)
    out = runner.generate(torch.tensor([ids]), NEW)[0].tolist()
    return out, max(m.attended for m in runner.layers.values()), len(ids) + NEW


METHODS = ["full attention", "truncation", "StreamingLLM", "NBCE", "PCW", "InfLLM", "kNN"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--context", type=int, default=512, help="the budget: tokens a method may attend to")
    p.add_argument("--length", type=int, default=2048, help="prompt length in tokens")
    p.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    p.add_argument("--trials", type=int, default=1)
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(args.model)
    rng = random.Random(0)
    prompts = []
    for depth in args.depths:
        for _ in range(args.trials):
            key = rng.randrange(10 ** (KEY_DIGITS - 1), 10 ** KEY_DIGITS)
            text = passkey_prompt(tokenizer, args.length, depth, key)
            doc, question = text[:-len(QUESTION)], QUESTION
            prompts.append((tokenizer.encode(doc), tokenizer.encode(question, add_special_tokens=False), key))

    print(f"{args.model}: passkey prompts of {args.length} tokens, budget {args.context} tokens, "
          f"depths {args.depths} x {args.trials} trial(s)")
    print("| method | accuracy | keys per query (max) | KV tokens held | peak MiB | tok/s |\n|---|---|---|---|---|---|")
    for name in args.methods:
        if name == "full attention" and args.length + NEW > model.cfg.max_seq_len:
            print(f"| {name} | beyond context ({model.cfg.max_seq_len}) | | | | |", flush=True)
            continue
        hits, attended, held, tokens = 0, 0, 0, 0
        start = time.perf_counter()
        with torch.no_grad():
            for doc, question, key in prompts:
                out, a, h = run_method(name, model, doc, question, args.context)
                hits += answer_key(tokenizer.decode(out)) == key
                attended, held, tokens = max(attended, a), max(held, h), tokens + len(doc) + len(question) + NEW
        rate = tokens / (time.perf_counter() - start)
        with torch.no_grad(), PeakMemory() as mem:
            run_method(name, model, *prompts[0][:2], args.context)
        print(f"| {name} | {hits}/{len(prompts)} | {attended} | {held} | {mem.peak / 2**20:.0f} | {rate:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
