"""Document quality filters: length bounds and the Gopher repetition rules.

Rae et al. 2021 ("Scaling Language Models: Methods, Analysis & Insights from
Training Gopher", appendix A.1.1) drop web documents that repeat themselves:
too many duplicate lines, too many characters in the single most frequent
word 2/3/4-gram, or too many characters covered by repeated 5..10-grams. Their
thresholds are the defaults here, and as in Gopher they judge only documents
of at least 50 words (one repeated bigram is 20% of a ten-word fortune).
They were tuned on web pages, so apply them knowingly to drama: speaker-name
lines put Shakespeare's plays at 15-30% duplicate lines and *The Merry Wives
of Windsor* just over the limit -- which is why fetchers do not filter and
:func:`clean_documents` is an explicit step.

The n-gram statistics are vectorised: words become integer ids, each n-gram a
polynomial hash of its ids (wrapping uint64 arithmetic; collisions are
negligible at corpus scale), and counting is :func:`numpy.unique`.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

import numpy as np

from llmkit.data.document import Document
from llmkit.data.text import normalize

_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds for :func:`quality_issue`; a document failing any one is dropped."""

    # --- length ---
    min_chars: int = 1  # fortunes are one line, so only empty documents go by default
    max_chars: int | None = None  # None: no upper bound
    # --- Gopher repetition rules ---
    repetition_min_words: int = 50  # Gopher's own minimum length; shorter texts skip these rules
    max_dup_line_frac: float = 0.30  # share of non-blank lines that repeat an earlier line
    max_dup_line_char_frac: float = 0.20  # share of line characters in those repeats
    top_ngram_char_frac: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    dup_ngram_char_frac: tuple[tuple[int, float], ...] = (
        (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))


def duplicate_line_fractions(text: str) -> tuple[float, float]:
    """(share of non-blank lines that repeat an earlier line, share of line characters they hold)."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if not lines:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_lines = dup_chars = 0
    for line in lines:
        if line in seen:
            dup_lines += 1
            dup_chars += len(line)
        seen.add(line)
    return dup_lines / len(lines), dup_chars / sum(map(len, lines))


def _word_ids(text: str) -> tuple[np.ndarray, np.ndarray]:
    vocab: dict[str, int] = {}
    words = text.split()
    ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), dtype=np.uint64, count=len(words))
    return ids, np.fromiter(map(len, words), dtype=np.int64, count=len(words))


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """Polynomial uint64 hash of every window of ``n`` consecutive ids: ``(len(ids) - n + 1,)``."""
    h = np.zeros(len(ids) - n + 1, dtype=np.uint64)  # (num ngrams,)
    for k in range(n):
        h = h * _HASH_BASE + ids[k:len(ids) - n + 1 + k] + np.uint64(1)
    return h


def top_ngram_char_fraction(text: str, n: int) -> float:
    """Share of word characters inside occurrences of the most frequent word ``n``-gram."""
    return _top_ngram(*_word_ids(text), n)


def duplicate_ngram_char_fraction(text: str, n: int) -> float:
    """Share of word characters covered by word ``n``-grams that repeat an earlier occurrence."""
    return _dup_ngram(*_word_ids(text), n)


def _top_ngram(ids: np.ndarray, lens: np.ndarray, n: int) -> float:
    if len(ids) < n or lens.sum() == 0:
        return 0.0
    _, first, counts = np.unique(ngram_hashes(ids, n), return_index=True, return_counts=True)
    top = counts.argmax()
    if counts[top] < 2:
        return 0.0
    start = first[top]
    return float(counts[top] * lens[start:start + n].sum() / lens.sum())


def _dup_ngram(ids: np.ndarray, lens: np.ndarray, n: int) -> float:
    if len(ids) < n or lens.sum() == 0:
        return 0.0
    hashes = ngram_hashes(ids, n)
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    repeats = np.flatnonzero(first[inverse] != np.arange(len(hashes)))  # starts of non-first occurrences
    cover = np.zeros(len(ids) + 1, dtype=np.int64)  # +1 at each repeat's start, -1 just past its end
    np.add.at(cover, repeats, 1)
    np.add.at(cover, repeats + n, -1)
    covered = np.cumsum(cover[:-1]) > 0
    return float(lens[covered].sum() / lens.sum())


def quality_issue(text: str, config: QualityConfig = QualityConfig()) -> str | None:
    """Why ``text`` fails ``config`` (e.g. ``"dup_line_frac 0.41 > 0.30"``), or None if it passes."""
    if len(text) < config.min_chars:
        return f"too_short {len(text)} < {config.min_chars}"
    if config.max_chars is not None and len(text) > config.max_chars:
        return f"too_long {len(text)} > {config.max_chars}"
    ids, lens = _word_ids(text)
    if len(ids) < config.repetition_min_words:
        return None
    line_frac, line_char_frac = duplicate_line_fractions(text)
    checks = [("dup_line_frac", line_frac, config.max_dup_line_frac),
              ("dup_line_char_frac", line_char_frac, config.max_dup_line_char_frac)]
    checks += [(f"top_{n}gram_char_frac", _top_ngram(ids, lens, n), limit)
               for n, limit in config.top_ngram_char_frac]
    checks += [(f"dup_{n}gram_char_frac", _dup_ngram(ids, lens, n), limit)
               for n, limit in config.dup_ngram_char_frac]
    for name, value, limit in checks:
        if value > limit:
            return f"{name} {value:.2f} > {limit:.2f}"
    return None


def clean_documents(docs: list[Document], config: QualityConfig = QualityConfig()
                    ) -> tuple[list[Document], Counter[str]]:
    """Normalise every document's text and drop those failing ``config``.

    Returns:
        ``(kept documents, Counter of drop reasons by rule name)``.
    """
    kept, dropped = [], Counter()
    for doc in docs:
        doc = dataclasses.replace(doc, text=normalize(doc.text))
        issue = quality_issue(doc.text, config)
        if issue is None:
            kept.append(doc)
        else:
            dropped[issue.split()[0]] += 1
    return kept, dropped
