"""Beam search with transformers' scoring and stopping rules, on the static KV cache.

Each prompt keeps ``n = num_beams`` running hypotheses (rows ``b * n + j`` of
the cache) and up to ``n`` finished ones. One step:

1. add each row's next-token log-probabilities (after the penalty processors)
   to its running score and take the best ``K = max(2, 1 + #stop ids) * n``
   of all ``n * V`` continuations, so that at least ``n`` of them do not end
   in a stop id;
2. a continuation ranked in the top ``n`` that ends in a stop id (or reaches
   ``max_new_tokens``) becomes a finished hypothesis with score
   ``sum log p / generated_length ** length_penalty``, the generated length
   counting the stop token; the finished set keeps the best ``n``;
3. the best ``n`` continuations that did not finish become the new running
   beams; the cache rows are reordered to follow their parents.

A prompt is done when it can no longer improve: it has ``n`` finished
hypotheses and its best running beam, scored at the current length (or, for
``early_stopping="never"`` with a positive length penalty, at the longest
length still reachable), is no better than the worst finished one. With
``early_stopping=True`` a prompt is done as soon as it has ``n`` finished
hypotheses. These are the rules of transformers' vectorised ``_beam_search``
(checked against 5.x), so the best hypothesis equals
``generate(num_beams=n, do_sample=False)`` token for token.
Beam search is deterministic: sampling parameters other than the penalties
are rejected.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

from llmkit.generate.compile import compile_step
from llmkit.generate.decoding import (TokenResult, check_context, forward_last, full_mask, prompt_tokens,
                                      setup_cache)
from llmkit.generate.sampling import SamplingParams, process_logits
from llmkit.model import CausalLM

_MASKED = -1.0e9  # score of an empty finished slot and of a continuation that may not be chosen


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, j], ...]`` for x (B, M, ...) and index (B, N) -> (B, N, ...)."""
    return torch.take_along_dim(x, index.view(*index.shape, *([1] * (x.dim() - 2))), dim=1)


@torch.no_grad()
def beam_search(model: CausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                max_new_tokens: int, num_beams: int, length_penalty: float = 1.0,
                early_stopping: bool | Literal["never"] = False, sampling: SamplingParams | None = None,
                stop_ids: Iterable[int] = (), compile: bool = False, kv_cache_dtype: str | None = None) -> TokenResult:
    """The best beam-search hypothesis for each prompt of a left-padded batch.

    Args:
        model: the language model (eval mode).
        input_ids: (B, T) prompt ids, left-padded.
        attention_mask: (B, T) 0/1, 0 on padding; None = no padding.
        max_new_tokens: generated tokens per hypothesis at most (clipped to the context).
        num_beams: hypotheses kept per prompt.
        length_penalty: finished scores are divided by ``length ** length_penalty``; > 0 favours
            longer sequences, < 0 shorter ones.
        early_stopping: True: stop a prompt once it has ``num_beams`` finished hypotheses; False: stop
            when the best running beam at its current length cannot win; "never": assume it
            could reach ``max_new_tokens`` when ``length_penalty > 0``.
        sampling: only its penalties are used; a temperature > 0 is rejected.
        stop_ids: ids that finish a hypothesis (included as its last token).
        compile: ``torch.compile`` the decode forward.
        kv_cache_dtype: None/"auto" (the model's dtype), "int8" or "fp8": quantize the KV cache
            (:mod:`llmkit.quant.kv`).
    Returns:
        One hypothesis per prompt and its finish reason.
    """
    params = (sampling or SamplingParams()).validate()
    if not params.greedy:
        raise ValueError("beam search does not sample: use temperature=0 with num_beams > 1")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    device = model.device
    b, t = input_ids.shape
    n = num_beams
    max_new = check_context(model, t, max_new_tokens)
    ids = input_ids.to(device).repeat_interleave(n, dim=0)  # (B*n, T): row b*n + j is beam j of prompt b
    mask = (torch.ones_like(ids) if attention_mask is None else attention_mask.to(device).repeat_interleave(n, dim=0))
    cache_mask = full_mask(mask, setup_cache(model, b * n, t + max_new, compile, kv_cache_dtype))
    prompt_seen = counts = None
    if params.penalised:
        prompt_seen = prompt_tokens(ids, mask, model.cfg.vocab_size)
        counts = torch.zeros(b * n, model.cfg.vocab_size, device=device)
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    k = max(2, 1 + stops.numel()) * n
    step = compile_step(forward_last, device, compile)

    running_scores = torch.full((b, n), _MASKED, device=device)
    running_scores[:, 0] = 0  # all beams start equal: only the first may expand, or they would repeat
    running_tokens = torch.zeros(b, n, max_new, dtype=torch.long, device=device)
    done_scores = torch.full((b, n), _MASKED, device=device)
    done_tokens = torch.zeros(b, n, max_new, dtype=torch.long, device=device)
    done_len = torch.zeros(b, n, dtype=torch.long, device=device)
    done_full = torch.zeros(b, n, dtype=torch.bool, device=device)  # slot holds a finished hypothesis
    improvable = torch.ones(b, dtype=torch.bool, device=device)
    top_n = torch.arange(k, device=device) < n  # (K,)

    logits = forward_last(model, ids, torch.arange(t, device=device), cache_mask)  # prefill, (B*n, V)
    pos = torch.tensor([t], device=device)
    for length in range(1, max_new + 1):  # tokens per hypothesis after this step
        logprobs = process_logits(logits.log_softmax(dim=-1), params, prompt_seen, counts)
        vocab = logprobs.shape[-1]
        total = (logprobs.view(b, n, vocab) + running_scores[..., None]).view(b, n * vocab)
        cand_scores, flat = total.topk(k, dim=-1)  # (B, K), best first
        parent, token = flat // vocab, flat % vocab
        cand_tokens = _gather(running_tokens, parent)  # (B, K, max_new)
        cand_tokens[:, :, length - 1] = token
        ends = torch.isin(token, stops) | (length >= max_new)  # (B, K)

        # finished hypotheses: top-n continuations that end, unless their prompt is already done
        closed = ~improvable | (done_full.all(dim=1) & (early_stopping is True))  # (B,)
        accept = ends & top_n & ~closed[:, None]
        scores = torch.where(accept, cand_scores / length ** length_penalty, _MASKED)
        keep = torch.cat([done_scores, scores], dim=1).topk(n, dim=-1).indices  # (B, n)
        done_scores = _gather(torch.cat([done_scores, scores], dim=1), keep)
        done_tokens = _gather(torch.cat([done_tokens, cand_tokens], dim=1), keep)
        done_len = _gather(torch.cat([done_len, torch.full_like(token, length)], dim=1), keep)
        done_full = _gather(torch.cat([done_full, accept], dim=1), keep)

        # running beams: the best n continuations that did not end
        live = cand_scores + ends * _MASKED
        best = live.topk(n, dim=-1).indices  # (B, n)
        running_scores = _gather(live, best)
        running_tokens = _gather(cand_tokens, best)

        reach = max_new if early_stopping == "never" and length_penalty > 0 else length
        best_possible = running_scores[:, 0] / reach ** length_penalty
        worst_done = torch.where(done_full.all(dim=1), done_scores.min(dim=1).values, _MASKED)
        improvable &= best_possible > worst_done
        all_closed = early_stopping is True and bool(done_full.all())
        if all_closed or not bool(improvable.any()) or bool(ends.all()):
            break

        rows = (torch.arange(b, device=device)[:, None] * n + _gather(parent, best)).view(-1)  # (B*n,)
        model.reorder_cache(rows)
        next_tokens = _gather(token, best).view(-1, 1)  # (B*n, 1)
        if counts is not None:
            counts = counts.index_select(0, rows)
            counts.scatter_add_(1, next_tokens, torch.ones_like(counts[:, :1]))
        logits = step(model, next_tokens, pos, cache_mask)
        pos += 1

    best_len = done_len[:, 0].tolist()
    token_ids = [row[:length] for row, length in zip(done_tokens[:, 0].tolist(), best_len)]
    stop_set = set(stops.tolist())
    reasons = ["stop" if ids_ and ids_[-1] in stop_set else "length" for ids_ in token_ids]
    return TokenResult(token_ids, reasons)
