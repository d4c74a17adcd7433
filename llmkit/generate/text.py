"""``generate``: prompts in, text out (whole, or streamed as deltas).

This layer owns everything that needs the tokenizer: encoding and
left-padding the prompts (``prompts.py``), EOS, incremental detokenization
that never splits a UTF-8 character (``Tokenizer.stream_decoder``), and stop
strings (``stop.py``). The token loop underneath (``loop.py``) knows only ids;
when a stop string appears in a row's text, that row is ended through
``TokenStream.finish``.

Output conventions: the text of a row excludes the token that ended it (EOS
or a stop id) and is cut right before a stop string; ``token_ids`` keep every
generated id, including the one that ended the row. Special tokens are
skipped when decoding.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from llmkit.generate.beam import beam_search
from llmkit.generate.decoding import FinishReason
from llmkit.generate.loop import TokenStream
from llmkit.generate.prompts import Prompts, encode_prompts, left_pad
from llmkit.generate.sampling import SamplingParams
from llmkit.generate.stop import StopStrings
from llmkit.model import CausalLM
from llmkit.tokenizer import Tokenizer


@dataclass
class GenerationResult:
    """What :func:`generate` returns without ``stream``: one entry per prompt."""

    texts: list[str]  # generated text, without the prompt
    token_ids: list[list[int]]  # generated ids, ending with the stop id that ended the row, if one did
    finish_reasons: list[FinishReason]  # "stop" (EOS, stop id or stop string) or "length"

    @property
    def text(self) -> str:
        """The text of a single prompt."""
        if len(self.texts) != 1:
            raise ValueError(f"this result holds {len(self.texts)} texts: use .texts")
        return self.texts[0]


class RowText:
    """One row's text as its tokens arrive: detokenized incrementally, cut at stop strings."""

    def __init__(self, tokenizer: Tokenizer, stops: StopStrings):
        self.decoder = tokenizer.stream_decoder(skip_special_tokens=True)
        self.stops = stops
        self.text = ""
        self.sent = 0  # characters already streamed
        self.stopped = False

    def add(self, token: int) -> bool:
        """Append a token's text; True if that completed a stop string."""
        return self._extend(self.decoder.step(token))

    def close(self) -> None:
        """The row ended: release any incomplete character still pending."""
        if not self.stopped:
            self._extend(self.decoder.flush())

    def _extend(self, delta: str) -> bool:
        start = len(self.text)
        self.text += delta
        if self.stops and (i := self.stops.find(self.text, start)) >= 0:
            self.text, self.stopped = self.text[:i], True
        return self.stopped

    def take(self, final: bool) -> str:
        """Text not yet streamed, minus a tail that could still become a stop string (unless ``final``)."""
        end = len(self.text) if final else len(self.text) - self.stops.holdback(self.text)
        out, self.sent = self.text[self.sent:end], max(self.sent, end)
        return out


class _TextGeneration:
    """Runs a :class:`TokenStream` and turns its tokens into per-row text deltas."""

    def __init__(self, tokens: TokenStream, tokenizer: Tokenizer, stops: StopStrings):
        self.tokens = tokens
        self.rows = [RowText(tokenizer, stops) for _ in tokens.token_ids]

    def __iter__(self) -> Iterator[tuple[int, str]]:
        stream = self.tokens
        for step in stream:
            for row, token in enumerate(step):
                if token is None:
                    continue
                text = self.rows[row]
                ended = stream.finish_reasons[row] is not None  # by a stop id or the length limit
                if token in stream.stop_ids:
                    text.close()
                elif text.add(token):
                    stream.finish(row, "stop")
                    ended = True
                elif ended:
                    text.close()
                if delta := text.take(final=ended):
                    yield row, delta

    def result(self) -> GenerationResult:
        tokens = self.tokens.result()
        return GenerationResult([r.text for r in self.rows], tokens.token_ids, tokens.finish_reasons)


def _split_stop(stop: str | int | Sequence[str | int] | None) -> tuple[list[str], set[int]]:
    items = [] if stop is None else [stop] if isinstance(stop, (str, int)) else list(stop)
    bad = [s for s in items if not isinstance(s, (str, int))]
    if bad:
        raise ValueError(f"stop must hold strings or token ids, got {bad[0]!r}")
    return [s for s in items if isinstance(s, str)], {s for s in items if isinstance(s, int)}


def generate(model: CausalLM, tokenizer: Tokenizer, prompts: Prompts, *, sampling: SamplingParams | None = None,
             max_new_tokens: int = 256, stop: str | int | Sequence[str | int] | None = None, seed: int | None = None,
             num_beams: int = 1, length_penalty: float = 1.0, early_stopping: bool | Literal["never"] = False,
             stream: bool = False, compile: bool = False, kv_cache_dtype: str | None = None,
             **sampling_fields: float) -> GenerationResult | Iterator[str] | Iterator[tuple[int, str]]:
    """Generate text for one prompt or a batch.

    Args:
        model: the language model (eval mode), or a whole-model adapter with its interface.
        tokenizer: its tokenizer (EOS ends a row; the chat template renders conversations).
        prompts: a string, a list of strings, a conversation (list of ``{"role", "content"}``
            dicts) or a list of conversations; see :mod:`llmkit.generate.prompts`.
        sampling: how tokens are chosen (:class:`SamplingParams`); default greedy.
        **sampling_fields: shorthand for ``sampling=SamplingParams(**sampling_fields)``
            (``temperature=0.7, top_p=0.9``); not combined with ``sampling``.
        max_new_tokens: tokens to generate per prompt at most (clipped to the context).
        stop: stop strings and/or stop token ids, besides EOS.
        seed: makes sampling reproducible; None uses torch's global random state.
        num_beams: > 1 runs beam search (greedy only; no stop strings, no streaming).
        length_penalty: beam search: scores are divided by length ** length_penalty.
        early_stopping: beam search stopping rule: True, False or "never" (as in transformers).
        stream: return an iterator of text deltas instead of the finished result.
        compile: ``torch.compile`` the decode step (the first call compiles; falls back to eager).
        kv_cache_dtype: None/"auto" (the model's dtype), "int8" or "fp8": quantize the KV cache
            (:mod:`llmkit.quant.kv`; about half the cache memory of bf16).

    Returns:
        Without ``stream``: a :class:`GenerationResult` (``.text`` for a single prompt).
        With ``stream``: for a single prompt an iterator of ``str`` deltas; for a batch an
        iterator of ``(prompt_index, delta)`` pairs. Concatenated, a row's deltas equal its
        final text.

    Raises:
        ValueError: invalid parameters, an empty prompt, or a prompt as long as the context.
    """
    if sampling is not None and sampling_fields:
        raise ValueError(f"give sampling= or its fields ({', '.join(sampling_fields)}), not both")
    sampling = (sampling or SamplingParams(**sampling_fields)).validate()
    rows, single = encode_prompts(tokenizer, prompts)
    stop_strings, stop_ids = _split_stop(stop)
    if tokenizer.eos_id is not None:
        stop_ids.add(tokenizer.eos_id)
    pad = next((i for i in (tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)
    ids, mask = left_pad(rows, pad)

    if num_beams > 1:
        if stream or stop_strings:
            raise ValueError("beam search supports neither streaming nor stop strings (stop ids are fine)")
        out = beam_search(model, ids, mask, max_new_tokens=max_new_tokens, num_beams=num_beams,
                          length_penalty=length_penalty, early_stopping=early_stopping, sampling=sampling,
                          stop_ids=stop_ids, compile=compile, kv_cache_dtype=kv_cache_dtype)
        texts = [tokenizer.decode(t[:-1] if r == "stop" else t, skip_special_tokens=True)
                 for t, r in zip(out.token_ids, out.finish_reasons)]
        return GenerationResult(texts, out.token_ids, out.finish_reasons)

    generator = torch.Generator(model.device).manual_seed(seed) if seed is not None else None
    tokens = TokenStream(model, ids, mask, max_new_tokens=max_new_tokens, sampling=sampling, stop_ids=stop_ids,
                         generator=generator, compile=compile, kv_cache_dtype=kv_cache_dtype)
    run = _TextGeneration(tokens, tokenizer, StopStrings(stop_strings))
    if stream:
        return (delta for _, delta in run) if single else iter(run)
    for _ in run:
        pass
    return run.result()
