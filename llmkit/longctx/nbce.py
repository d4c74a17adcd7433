"""NBCE: naive Bayes context extension (Su Jianlin, 2023, "NBCE: 使用朴素贝叶斯扩展LLM的Context处理长度").

A context too long for the model is cut into pieces S_1..S_n, assumed
independent given the answer T. Bayes then gives

    log p(T | S_1..S_n) = sum_k log p(T | S_k) - (n - 1) log p(T) + const,

which the author generalises to ``(1 + beta) * pool_k log p(T | S_k) - beta * log p(T)``
with a tunable ``beta`` (0.25 in his reference code) and a pooling of the
per-context log-probabilities: ``"min_entropy"`` takes the context whose
next-token distribution has the lowest entropy (the one that "knows" the
answer; the reference code's choice), ``"mean"`` averages them (with
``beta = n - 1`` that is exactly the naive Bayes formula above).

Design. Each piece becomes one batch row ``S_k + question``, plus an
unconditioned row holding the question alone; rows are left-padded and run
through the model's ordinary static cache, so every step is one batched
forward. The combined log-probabilities choose one token, which is appended
to every row. With one context and ``beta = 0`` this is plain decoding.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from llmkit.generate.sampling import SamplingParams
from llmkit.longctx.sampling import check_sampling, next_token
from llmkit.model import CausalLM

Pooling = Literal["min_entropy", "mean"]


def nbce_combine(logprobs: torch.Tensor, beta: float = 0.25, pooling: Pooling = "min_entropy") -> torch.Tensor:
    """Combine one step's next-token log-probabilities.

    Args:
        logprobs: (n + 1, V) log-softmaxed; rows 0..n-1 are conditioned on the contexts, row n
            is unconditioned (the question alone).
        beta: weight of the unconditioned correction.
        pooling: ``"min_entropy"`` (the lowest-entropy context) or ``"mean"`` (average of the n rows).
    Returns:
        (V,) ``(1 + beta) * pooled - beta * logprobs[n]``.
    """
    conditioned, uncond = logprobs[:-1], logprobs[-1]
    if pooling == "min_entropy":
        entropy = -(conditioned.exp() * conditioned).nan_to_num().sum(dim=-1)  # (n,); 0 * -inf counts as 0
        pooled = conditioned[entropy.argmin()]
    elif pooling == "mean":
        pooled = conditioned.mean(dim=0)
    else:
        raise ValueError(f"pooling must be 'min_entropy' or 'mean', got {pooling!r}")
    return (1 + beta) * pooled - beta * uncond


@torch.no_grad()
def nbce_generate(model: CausalLM, contexts: Sequence[Sequence[int]], question: Sequence[int],
                  max_new_tokens: int, *, beta: float = 0.25, pooling: Pooling = "min_entropy",
                  sampling: SamplingParams | None = None, stop_ids: Sequence[int] = (), pad_id: int = 0,
                  generator: torch.Generator | None = None) -> list[int]:
    """Generate an answer to ``question`` conditioned on several contexts at once.

    Args:
        model: the language model (eval mode).
        contexts: token ids of each context piece (each must fit the model's context with the question).
        question: token ids appended to every context, and alone in the unconditioned row.
        max_new_tokens: tokens to generate at most.
        beta, pooling: see :func:`nbce_combine`.
        sampling: how the token is chosen from the combined scores; default greedy.
        stop_ids: ids that end the answer (included in the result).
        pad_id: id used for left padding (masked out, any valid id works).
        generator: random source when sampling.
    Returns:
        The generated token ids.
    """
    sampling = check_sampling(sampling)
    if not contexts or not question or max_new_tokens < 1:
        raise ValueError("need at least one context, a non-empty question and max_new_tokens >= 1")
    rows = [list(c) + list(question) for c in contexts] + [list(question)]
    longest = max(map(len, rows))
    if longest + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(f"the longest context + question ({longest} tokens) + max_new_tokens ({max_new_tokens}) "
                         f"exceeds the model's context ({model.cfg.max_seq_len}): split the contexts smaller")
    device = model.device
    ids = torch.tensor([[pad_id] * (longest - len(r)) + r for r in rows], device=device)  # (n + 1, L)
    mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in rows], device=device)
    model.setup_caches(len(rows), longest + max_new_tokens)
    logits = model(ids, input_pos=torch.arange(longest, device=device), attention_mask=mask,
                   logits_indices=torch.tensor([longest - 1], device=device))[:, -1]  # not (rows, L, vocab)
    out: list[int] = []
    for step in range(max_new_tokens):
        combined = nbce_combine(logits.float().log_softmax(dim=-1), beta, pooling)
        token = int(next_token(combined[None], sampling, generator))
        out.append(token)
        if token in stop_ids or step == max_new_tokens - 1:
            break
        pos = torch.tensor([longest + step], device=device)
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        logits = model(torch.full((len(rows), 1), token, device=device), input_pos=pos, attention_mask=mask)[:, -1]
    return out
