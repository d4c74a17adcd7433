"""Token-budgeted splitting of a long text at sentence boundaries.

Sentences (ended by ``.``, ``!``, ``?`` or a blank line) are packed greedily
into chunks of at most ``chunk_tokens`` tokens as the caller's token counter
measures them; a single sentence longer than the budget is cut at whitespace
(or, if one word is too long, anywhere) into pieces that fit. Joining the
chunks with single spaces gives back the text with its whitespace runs
normalised, so nothing is lost or duplicated.
"""
from __future__ import annotations

import re
from collections.abc import Callable

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")


def sentences(text: str) -> list[str]:
    """The sentences of ``text``, stripped, empty ones dropped."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append(text[start:m.start() + len(m.group(0).rstrip())] if m.group(0).strip() else text[start:m.start()])
        start = m.end()
    out.append(text[start:])
    return [" ".join(s.split()) for s in out if s.strip()]


def _cut(sentence: str, count: Callable[[str], int], budget: int) -> list[str]:
    """Pieces of an over-long sentence, each within ``budget``: whole words where possible."""
    pieces, current = [], ""
    for word in sentence.split(" "):
        trial = f"{current} {word}" if current else word
        if count(trial) <= budget:
            current = trial
            continue
        if current:
            pieces.append(current)
        while count(word) > budget:  # one word over the budget: cut it by characters
            n = max(1, len(word) * budget // count(word))
            while n > 1 and count(word[:n]) > budget:
                n -= 1
            pieces.append(word[:n])
            word = word[n:]
        current = word
    return pieces + ([current] if current else [])


def split_text(text: str, count: Callable[[str], int], chunk_tokens: int) -> list[str]:
    """Chunks of ``text`` within ``chunk_tokens`` tokens each, cut at sentence boundaries.

    Args:
        text: the document.
        count: number of tokens in a string (e.g. ``lambda s: len(tokenizer.encode(s, add_special_tokens=False))``).
        chunk_tokens: the budget per chunk (> 0).
    Returns:
        The chunks in order; ``[]`` for a text with no words.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    chunks, current = [], ""
    for sentence in sentences(text):
        trial = f"{current} {sentence}" if current else sentence
        if count(trial) <= chunk_tokens:
            current = trial
            continue
        if current:
            chunks.append(current)
        current = ""
        if count(sentence) <= chunk_tokens:
            current = sentence
        else:
            *whole, current = _cut(sentence, count, chunk_tokens)
            chunks += whole
    return chunks + ([current] if current else [])
