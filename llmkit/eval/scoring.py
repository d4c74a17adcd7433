"""Log-likelihood of token spans under a causal LM: the one primitive every eval task is built on.

A *span* is a row of token ids whose last ``k`` ids are scored, each given all
ids before it in the row. Perplexity windows (k = the stride), multiple-choice
continuations and lm-eval-harness requests are all spans, so they share one
batched forward: rows are sorted longest first (so a batch wastes little
padding and the peak memory is met at once, as lm-eval-harness does), left
padded with an attention mask when their lengths differ, and only the last
``max(k)`` logits of a batch are computed (``logits_to_keep``), which keeps a
(B, T, vocab) tensor out of memory for long windows. Log-probabilities are
taken in fp32 whatever the model's dtype.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpanScore:
    """How a model scores the last ``n_tokens`` ids of a row.

    Attributes:
        logprob: the summed log-probability of those tokens (nats, <= 0).
        n_tokens: how many tokens were scored.
        greedy: whether each of them is the model's argmax (lm-eval's ``is_greedy``).
    """

    logprob: float
    n_tokens: int
    greedy: bool


def context_length(model) -> int:
    """The longest input (in tokens) the model was built for."""
    return model.cfg.max_seq_len


@torch.no_grad()
def score_spans(model, rows: Sequence[Sequence[int]], n_targets: Sequence[int], batch_size: int = 8) -> list[SpanScore]:
    """Score the last ``n_targets[i]`` ids of each ``rows[i]`` given the ids before them.

    The model reads ``row[:-1]``; its logits at the last ``k`` positions of that input predict ``row[-k:]``.

    Args:
        rows: token-id rows; each needs at least ``k + 1`` ids and at most the context length + 1.
        n_targets: ``k`` per row, >= 1.
        batch_size: rows per forward pass.
    Returns:
        One :class:`SpanScore` per row, in the input order.
    Raises:
        ValueError: a row too short for its ``k``, or longer than the model's context + 1.
    """
    ctx = context_length(model)
    for i, (row, k) in enumerate(zip(rows, n_targets, strict=True)):
        if k < 1 or len(row) < k + 1:
            raise ValueError(f"row {i}: cannot score {k} tokens of a row of {len(row)} (need k >= 1 and "
                             "at least one token of context)")
        if len(row) - 1 > ctx:
            raise ValueError(f"row {i}: {len(row) - 1} input tokens exceed the model's context of {ctx}")
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out: list[SpanScore | None] = [None] * len(rows)
    device = model.device
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        inputs = [list(rows[i][:-1]) for i in batch]
        width, keep = len(inputs[0]), max(n_targets[i] for i in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)  # (B, T) left-padded
        mask = torch.zeros(len(batch), width, dtype=torch.long)  # (B, T)
        for b, row in enumerate(inputs):
            ids[b, width - len(row):] = torch.tensor(row)
            mask[b, width - len(row):] = 1
        padded = bool((mask == 0).any())
        logits = model(ids.to(device), attention_mask=mask.to(device) if padded else None, logits_to_keep=keep)
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, keep, V)
        for b, i in enumerate(batch):
            k = n_targets[i]
            target = torch.tensor(rows[i][-k:], device=device)
            lp = logprobs[b, keep - k:]  # (k, V): the positions predicting the last k ids
            out[i] = SpanScore(logprob=float(lp.gather(-1, target[:, None]).double().sum()), n_tokens=k,
                               greedy=bool((lp.argmax(-1) == target).all()))
    return out


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of ``(context, continuation)`` as lm-eval-harness forms them.

    Trailing whitespace of the context moves to the continuation; the continuation's ids are those of
    the joint encoding after as many ids as the context alone encodes to, and the context's ids are its
    own encoding (where a merge crosses the boundary the two halves overlap or leave a gap, as in
    lm-eval); an empty context becomes the BOS (else EOS) token.
    """
    if not context:
        prefix = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        return ([prefix], cont) if cont[:1] != [prefix] else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    left = tokenizer.encode(context, add_special_tokens=False)
    return left, whole[len(left):]


def loglikelihoods(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 8) -> list[SpanScore]:
    """Log-likelihood of each continuation given its context (lm-eval's ``loglikelihood``).

    A pair longer than the context keeps its last ``context + 1`` tokens, cutting the context's start.
    """
    ctx = context_length(model)
    rows, ks = [], []
    for i, (context, continuation) in enumerate(pairs):
        left, right = encode_pair(tokenizer, context, continuation)
        if not right:
            raise ValueError(f"request {i}: the continuation {continuation!r} encodes to no tokens")
        if len(right) > ctx:
            raise ValueError(f"request {i}: the continuation has {len(right)} tokens, more than the context {ctx}")
        rows.append((left + right)[-(ctx + 1):])
        ks.append(len(right))
    return score_spans(model, rows, ks, batch_size)
