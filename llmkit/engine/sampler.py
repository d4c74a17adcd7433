"""Next tokens for a whole step in one batched pass, each row with its own sampling parameters.

The processors are those of :mod:`llmkit.generate.processors`, given per-row
parameters as (R, 1) tensors, so greedy rows, penalised rows and rows with
different temperatures or truncations share every kernel. A disabled
truncation is an identity value (top-k = vocabulary, top-p = 1, min-p = 0).
Sampling is the Gumbel-max trick of :mod:`llmkit.generate.sampling`; a seeded
request draws its noise from its own generator, so its output does not depend
on what else is in the batch.

Log-probabilities are those of the model's raw next-token distribution
(before penalties and temperature), as OpenAI's and vLLM's APIs report them.
"""
from __future__ import annotations

from collections.abc import Sequence as Seq

import torch

from llmkit.engine.sequence import Sequence
from llmkit.generate import processors as P
from llmkit.generate.argmax import argmax
from llmkit.generate.sampling import SamplingParams, gumbel_noise


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)[:, None]


def process(logits: torch.Tensor, params: Seq[SamplingParams], seqs: Seq[Sequence | None]) -> torch.Tensor:
    """Apply each row's penalties and warpers.

    Args:
        logits: (R, V) float32 next-token scores.
        params: one per row.
        seqs: the sequence of each row, whose prompt and output the penalties read (None where unpenalised).
    Returns:
        (R, V) processed logits (greedy rows get penalties only: warpers never change an argmax).
    """
    r, vocab = logits.shape
    device = logits.device
    if any(p.penalised for p in params):
        prompt_seen = torch.zeros(r, vocab, dtype=torch.bool, device=device)
        counts = torch.zeros(r, vocab, device=device)
        for i, (p, seq) in enumerate(zip(params, seqs)):
            if p.penalised:
                prompt, output = seq.token_ids[:seq.num_prompt_tokens], seq.output_token_ids
                prompt_seen[i, torch.tensor(prompt, dtype=torch.long, device=device)] = True
                if output:
                    counts[i].index_add_(0, torch.tensor(output, dtype=torch.long, device=device),
                                         torch.ones(len(output), device=device))
        rep = _column([p.repetition_penalty for p in params], device)
        logits = P.repetition_penalty(logits, prompt_seen | (counts > 0), rep)
        logits = P.presence_frequency_penalty(logits, counts, _column([p.presence_penalty for p in params], device),
                                              _column([p.frequency_penalty for p in params], device))
    if all(p.greedy for p in params):
        return logits
    sampled = torch.tensor([not p.greedy for p in params], device=device)[:, None]
    warped = P.temperature(logits, _column([p.temperature if p.temperature > 0 else 1.0 for p in params], device))
    if any(p.top_k for p in params):
        k = torch.tensor([p.top_k if p.top_k else vocab for p in params], device=device).clamp(max=vocab)
        kth = warped.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])  # (R, 1)
        warped = warped.masked_fill(warped < kth, P.NEG_INF)
    if any(p.top_p < 1 for p in params):
        warped = P.top_p(warped, _column([p.top_p for p in params], device))
    if any(p.min_p > 0 for p in params):
        p_min = _column([p.min_p for p in params], device)
        warped = warped.masked_fill(warped < warped.amax(dim=-1, keepdim=True) + p_min.log(), P.NEG_INF)
    return torch.where(sampled, warped, logits)


def sample(logits: torch.Tensor, params: Seq[SamplingParams], generators: Seq[torch.Generator | None]) -> torch.Tensor:
    """(R,) token ids: argmax for greedy rows, Gumbel-max draws for the others.

    Args:
        logits: (R, V) processed logits.
        params: one per row.
        generators: one per row: a seeded request's own generator, or None for the global one.
    """
    if all(p.greedy for p in params):
        return argmax(logits)
    noise = torch.zeros_like(logits)
    for i, (p, g) in enumerate(zip(params, generators)):
        if not p.greedy:
            noise[i] = gumbel_noise(logits.shape[1:], logits.device, g)
    return argmax(logits + noise)


def top_logprobs(logits: torch.Tensor, tokens: torch.Tensor, k: Seq[int]) -> list[dict[int, float]]:
    """Per row, the chosen token's log-probability and the ``k[i]`` most likely tokens' (chosen first).

    Args:
        logits: (R, V) raw float32 logits.
        tokens: (R,) chosen ids.
        k: how many alternatives each row reports (0 = only the chosen token).
    """
    logp = logits.log_softmax(dim=-1)
    chosen = logp.gather(1, tokens[:, None])[:, 0].tolist()
    most = max(k, default=0)
    top = logp.topk(most, dim=-1) if most else None
    out = []
    for i, token in enumerate(tokens.tolist()):
        row = {token: chosen[i]}
        if k[i]:
            for tok, lp in zip(top.indices[i, :k[i]].tolist(), top.values[i, :k[i]].tolist()):
                row.setdefault(tok, lp)
        out.append(row)
    return out
