"""The token-level decode loop: static KV cache, one-pass prefill, compiled decode step.

This is the gpt-fast recipe. Decoding is memory-bandwidth bound (every step
reads all weights to produce B tokens), so the loop's job is to add nothing
on top of the model forward:

- the KV cache is allocated once per generation shape (``setup_caches``) and
  kept on the model; a later call with the same batch and length bucket
  reuses it. torch's attention reads every slot of the static cache, so the
  bucket is tight (a multiple of 64) when decoding eagerly; the compiled step
  is specialised to the cache shape, so there buckets are powers of two from
  256 and a chat whose history grows recompiles a handful of times rather
  than every few turns (on CPU its attention kernel reads only the filled
  slots; on CUDA the spare slots cost up to twice the attention work);
- the prompt is prefilled in one forward (eager: its length varies);
- each decode step (forward + logits processing + token choice) is one
  compiled function of static shapes: the (B, S) attention mask is built
  once for the whole cache (left padding, then ones), and the slot index is
  a device tensor bumped in place;
- the only host sync per step is copying the B new token ids to the CPU,
  which the stop checks need anyway. Finished rows keep being computed (the
  batch shape is static) but emit nothing; the loop ends when all are done.

:class:`TokenStream` exposes the loop step by step, so the text layer can
stream and end rows on stop strings (``finish``); :func:`generate_tokens`
runs it to the end (or runs beam search) and needs no tokenizer.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

import torch

from llmkit.generate.beam import beam_search
from llmkit.generate.compile import compile_step
from llmkit.generate.decoding import (FinishReason, TokenResult, check_context, forward_last, full_mask,
                                      prompt_tokens, setup_cache)
from llmkit.generate.sampling import SamplingParams, gumbel_noise, process_logits, select
from llmkit.model import CausalLM
from llmkit.quant.kv import kv_storage_dtype

def decode_step(model: CausalLM, tokens: torch.Tensor, input_pos: torch.Tensor, mask: torch.Tensor,
                params: SamplingParams, prompt_seen: torch.Tensor | None, counts: torch.Tensor | None,
                noise: torch.Tensor | None) -> torch.Tensor:
    """One decode step, the function that gets compiled: (B, 1) tokens -> (B,) next tokens."""
    logits = forward_last(model, tokens, input_pos, mask)
    return select(process_logits(logits, params, prompt_seen, counts), noise)


class TokenStream:
    """A batched generation, iterated one decode step at a time.

    Iterating yields, per step, each row's new token id (None for rows already
    finished). Between steps the caller may end rows with :meth:`finish`, e.g. on
    a stop string; the loop stops once every row is finished.

    Args:
        model: the language model (eval mode).
        input_ids: (B, T) prompt ids, left-padded.
        attention_mask: (B, T) 0/1, 0 on padding; None = no padding.
        max_new_tokens: tokens to generate per row at most (clipped to the context).
        sampling: how to choose tokens; default greedy.
        stop_ids: ids that end a row (EOS and friends); they are recorded as the row's last token.
        generator: random source for sampling (seeded for reproducible runs).
        compile: ``torch.compile`` the decode step (falls back to eager if compiling fails).
        kv_cache_dtype: None/"auto" (the model's dtype), "int8" or "fp8": quantize the KV cache
            (:mod:`llmkit.quant.kv`).
    """

    def __init__(self, model: CausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int, sampling: SamplingParams | None = None, stop_ids: Iterable[int] = (),
                 generator: torch.Generator | None = None, compile: bool = False, kv_cache_dtype: str | None = None):
        kv_storage_dtype(kv_cache_dtype)  # a bad name fails here, not at the first step
        self.kv_cache_dtype = kv_cache_dtype
        self.model = model
        self.device = model.device
        self.input_ids = input_ids.to(self.device)
        mask = torch.ones_like(self.input_ids) if attention_mask is None else attention_mask.to(self.device)
        self.attention_mask = mask
        self.max_new_tokens = check_context(model, input_ids.shape[1], max_new_tokens)
        self.params = (sampling or SamplingParams()).validate()
        self.stop_ids = frozenset(stop_ids)
        self.generator = generator
        self.compile = compile
        batch = input_ids.shape[0]
        self.token_ids: list[list[int]] = [[] for _ in range(batch)]
        self.finish_reasons: list[FinishReason | None] = [None] * batch

    def finish(self, row: int, reason: FinishReason = "stop") -> None:
        """End ``row`` now. A stop found in the last token the length limit allowed still counts as a stop."""
        if self.finish_reasons[row] in (None, "length"):
            self.finish_reasons[row] = reason

    @property
    def done(self) -> bool:
        return all(r is not None for r in self.finish_reasons)

    def result(self) -> TokenResult:
        """The ids generated so far; rows still running are reported as ``"length"``."""
        return TokenResult([list(t) for t in self.token_ids], [r or "length" for r in self.finish_reasons])

    @torch.no_grad()
    def __iter__(self) -> Iterator[list[int | None]]:
        model, ids, params = self.model, self.input_ids, self.params
        b, t = ids.shape
        cache_len = setup_cache(model, b, t + self.max_new_tokens, self.compile, self.kv_cache_dtype)
        mask = full_mask(self.attention_mask, cache_len)  # (B, S), fixed for the whole generation
        prompt_seen = counts = None
        if params.penalised:
            vocab = model.cfg.vocab_size
            prompt_seen = prompt_tokens(ids, self.attention_mask, vocab)
            counts = torch.zeros(b, vocab, device=self.device)
        step = compile_step(decode_step, self.device, self.compile)
        noise = None

        logits = forward_last(model, ids, torch.arange(t, device=self.device), mask)  # prefill
        if not params.greedy:
            noise = gumbel_noise(logits.shape, self.device, self.generator)
        tokens = select(process_logits(logits, params, prompt_seen, counts), noise)  # (B,)
        pos = torch.tensor([t], device=self.device)
        while True:
            yield self._record(tokens.tolist())
            if self.done:
                return
            if counts is not None:
                counts.scatter_add_(1, tokens[:, None], torch.ones_like(counts[:, :1]))
            if not params.greedy:
                noise = gumbel_noise(logits.shape, self.device, self.generator)
            tokens = step(model, tokens[:, None], pos, mask, params, prompt_seen, counts, noise)
            pos += 1

    def _record(self, tokens: list[int]) -> list[int | None]:
        out: list[int | None] = []
        for row, tok in enumerate(tokens):
            if self.finish_reasons[row] is not None:
                out.append(None)
                continue
            self.token_ids[row].append(tok)
            out.append(tok)
            if tok in self.stop_ids:
                self.finish_reasons[row] = "stop"
            elif len(self.token_ids[row]) >= self.max_new_tokens:
                self.finish_reasons[row] = "length"
        return out


def generate_tokens(model: CausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                    max_new_tokens: int = 256, sampling: SamplingParams | None = None, stop_ids: Iterable[int] = (),
                    seed: int | None = None, num_beams: int = 1, length_penalty: float = 1.0,
                    early_stopping: bool | Literal["never"] = False, compile: bool = False,
                    kv_cache_dtype: str | None = None) -> TokenResult:
    """Generate token ids for a left-padded batch; no tokenizer involved.

    Args:
        model: the language model (eval mode).
        input_ids: (B, T) prompt ids, left-padded.
        attention_mask: (B, T) 0/1, 0 on padding; None = no padding.
        max_new_tokens: tokens to generate per row at most.
        sampling: token choice (greedy by default); beam search accepts only greedy with penalties.
        stop_ids: ids that end a row, e.g. the tokenizer's EOS id.
        seed: seed of the sampling noise; None draws from torch's global generator.
        num_beams: > 1 runs beam search (see :mod:`llmkit.generate.beam`).
        length_penalty: beam scores are divided by length ** length_penalty.
        early_stopping: beam search stopping rule, as in transformers (True, False or "never").
        compile: ``torch.compile`` the decode step.
        kv_cache_dtype: None/"auto" (the model's dtype), "int8" or "fp8": quantize the KV cache
            (:mod:`llmkit.quant.kv`).
    Returns:
        The generated ids and why each row stopped.
    """
    if num_beams > 1:
        return beam_search(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, num_beams=num_beams,
                           length_penalty=length_penalty, early_stopping=early_stopping, sampling=sampling,
                           stop_ids=stop_ids, compile=compile, kv_cache_dtype=kv_cache_dtype)
    generator = torch.Generator(model.device).manual_seed(seed) if seed is not None else None
    stream = TokenStream(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, sampling=sampling,
                         stop_ids=stop_ids, generator=generator, compile=compile, kv_cache_dtype=kv_cache_dtype)
    for _ in stream:
        pass
    return stream.result()
