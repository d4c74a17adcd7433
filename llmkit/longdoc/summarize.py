"""Summarising a document longer than the model's context: map-reduce, refine, map-rerank.

The document is split by tokens at sentence boundaries (:mod:`llmkit.longdoc.split`) into chunks of
``chunk_tokens``, then (the three chain types LangChain made standard):

- ``map_reduce``: summarise every chunk independently (one parallel batch),
  then summarise groups of summaries that fit a chunk, round after round,
  until one remains. Parallel, and each call sees one chunk's worth of text.
- ``refine``: summarise the first chunk, then walk the rest in order, each
  call rewriting the running summary in the light of the next chunk.
  Sequential, but the summary sees the document in order.
- ``map_rerank``: answer ``question`` from every chunk independently, each
  answer ending in a self-reported ``Score: N`` (0-100); the best-scoring
  answer wins. Suited to "find the part that answers X"; ties go to the earlier chunk.

Every prompt has to fit the context with its answer: ``chunk_tokens`` plus
the prompt's own words plus ``max_new_tokens`` must not exceed the model's
context, which is checked up front.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from llmkit.longdoc.llm import LLM, LocalLLM
from llmkit.longdoc.split import split_text

Method = Literal["map_reduce", "refine", "map_rerank"]
METHODS = ("map_reduce", "refine", "map_rerank")

MAP_PROMPT = "Write a concise summary of the following text.\n\n{text}\n\nCONCISE SUMMARY:"
REDUCE_PROMPT = ("The following are summaries of consecutive parts of one document.\n\n{text}\n\n"
                 "Write a concise summary of the whole document:")
REFINE_PROMPT = ("Here is a summary of the beginning of a document:\n{summary}\n\nHere is the next part:\n{text}\n\n"
                 "Refine the summary so that it covers both. If the new part adds nothing, repeat the summary.\n\n"
                 "REFINED SUMMARY:")
RERANK_PROMPT = ("{text}\n\nQuestion: {question}\nAnswer the question from the text above. Then, on a last line, "
                 "write 'Score: ' and a number from 0 to 100 saying how fully the text answers it.")
_SCORE = re.compile(r"score\s*:\s*(\d+(?:\.\d+)?)", re.I)


@dataclass
class Summary:
    """What :func:`summarize` returns."""

    text: str  # the summary (map_rerank: the best answer)
    method: str
    chunks: list[str]  # the document's chunks
    steps: list[list[str]] = field(default_factory=list)  # outputs of each round (map_rerank: answers)
    scores: list[float] = field(default_factory=list)  # map_rerank: each chunk's score


def _prompt_overhead(llm: LLM, method: Method) -> int:
    template = {"map_reduce": max(MAP_PROMPT, REDUCE_PROMPT, key=len), "refine": REFINE_PROMPT,
                "map_rerank": RERANK_PROMPT}[method]
    return llm.count_tokens(template) + 16  # template words plus chat-template markers


def _groups(texts: list[str], llm: LLM, budget: int) -> list[str]:
    """Join consecutive texts (blank-line separated) into groups within ``budget`` tokens, at least two each."""
    groups, current = [], []
    for t in texts:
        if len(current) >= 2 and llm.count_tokens("\n\n".join(current + [t])) > budget:
            groups.append("\n\n".join(current))
            current = []
        current.append(t)
    return groups + ["\n\n".join(current)]


def _score(answer: str) -> tuple[str, float]:
    """(answer without its score line, the score; 0 when it gave none)."""
    found = list(_SCORE.finditer(answer))
    if not found:
        return answer.strip(), 0.0
    return answer[:found[-1].start()].strip(), float(found[-1].group(1))


def summarize(text: str, model, tokenizer=None, *, method: Method = "map_reduce", chunk_tokens: int | None = None,
              max_new_tokens: int = 200, question: str = "What is this text about?") -> Summary:
    """Summarise ``text``, however long, with ``model``.

    Args:
        text: the document.
        model: a :class:`~llmkit.model.CausalLM` (give ``tokenizer``) or an LLM backend
            (:class:`~llmkit.longdoc.llm.LocalLLM`, :class:`~llmkit.longdoc.llm.OpenAIChat`).
        tokenizer: the CausalLM's tokenizer.
        method: ``"map_reduce"``, ``"refine"`` or ``"map_rerank"`` (see the module docstring).
        chunk_tokens: tokens of document per call; default: what the context leaves after the
            prompt and the answer.
        max_new_tokens: length limit of each call's output.
        question: map_rerank's question.
    Returns:
        A :class:`Summary`.
    Raises:
        ValueError: an empty text, an unknown method, or chunks that cannot fit the context.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    llm = LocalLLM(model, tokenizer) if tokenizer is not None else model
    room = llm.context - _prompt_overhead(llm, method) - max_new_tokens
    if method == "refine":
        room -= max_new_tokens  # the running summary rides along
    chunk_tokens = room if chunk_tokens is None else chunk_tokens
    if chunk_tokens > room or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens} does not fit: the context of {llm.context} tokens leaves "
                         f"{room} for text after the prompt and max_new_tokens={max_new_tokens}")
    if method == "map_reduce" and chunk_tokens < 2 * max_new_tokens:
        raise ValueError(f"map_reduce needs chunk_tokens >= 2 * max_new_tokens ({2 * max_new_tokens}) so that "
                         f"summaries can be combined; got {chunk_tokens}")
    chunks = split_text(text, llm.count_tokens, chunk_tokens)
    if not chunks:
        raise ValueError("the text is empty")

    if method == "map_rerank":
        answers = llm.complete([RERANK_PROMPT.format(text=c, question=question) for c in chunks], max_new_tokens)
        parsed = [_score(a) for a in answers]
        best = max(range(len(parsed)), key=lambda i: (parsed[i][1], -i))
        return Summary(parsed[best][0], method, chunks, [answers], [s for _, s in parsed])
    if method == "refine":
        summary = llm.complete([MAP_PROMPT.format(text=chunks[0])], max_new_tokens)[0]
        steps = [[summary]]
        for chunk in chunks[1:]:
            summary = llm.complete([REFINE_PROMPT.format(summary=summary, text=chunk)], max_new_tokens)[0]
            steps.append([summary])
        return Summary(summary, method, chunks, steps)
    summaries = llm.complete([MAP_PROMPT.format(text=c) for c in chunks], max_new_tokens)
    steps = [summaries]
    while len(summaries) > 1:
        summaries = llm.complete([REDUCE_PROMPT.format(text=g) for g in _groups(summaries, llm, chunk_tokens)],
                                 max_new_tokens)
        steps.append(summaries)
    return Summary(summaries[0], method, chunks, steps)
