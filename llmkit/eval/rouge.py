"""ROUGE-N, ROUGE-L and ROUGE-Lsum (Lin, 2004) exactly as Google's ``rouge-score`` computes them.

The text is lowercased, every run of characters outside ``[a-z0-9]`` becomes
a space, and (with ``use_stemmer``) words longer than three letters go
through the Porter stemmer: NLTK's ``PorterStemmer`` in its default
``NLTK_EXTENSIONS`` mode, the one rouge-score itself imports, so ``nltk`` is
needed only then. ROUGE-N counts clipped n-gram overlaps; ROUGE-L uses the
longest common subsequence of the two token lists; ROUGE-Lsum splits both
texts into sentences at newlines and counts the union-LCS hits of each
reference sentence against all predicted sentences (the summary-level LCS of
the ROUGE paper, section 3.2), each token used at most as often as it occurs
on both sides. Ties in the LCS backtrack are broken as rouge-score does, since
ROUGE-Lsum's union depends on which subsequence is picked.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Sequence

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_VALID = re.compile(r"^[a-z0-9]+$")
_ROUGE_N = re.compile(r"rouge([0-9])$")

Score = tuple[float, float, float]  # (precision, recall, fmeasure)


@functools.cache
def _stemmer() -> Callable[[str], str]:
    try:
        from nltk.stem import porter
    except ImportError as e:
        raise ImportError("rouge(use_stemmer=True) needs nltk's Porter stemmer: pip install nltk") from e
    return functools.lru_cache(maxsize=2**16)(porter.PorterStemmer().stem)


def tokenize(text: str, use_stemmer: bool = False) -> list[str]:
    """rouge-score's tokens: lowercase alphanumeric runs, words of 4+ letters stemmed if asked."""
    tokens = _NON_ALNUM.sub(" ", text.lower()).split()
    if use_stemmer:
        stem = _stemmer()
        tokens = [stem(t) if len(t) > 3 else t for t in tokens]
    return [t for t in tokens if _VALID.match(t)]


def _fmeasure(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _rouge_n(target: list[str], prediction: list[str], n: int) -> Score:
    def grams(tokens):
        return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))

    t, p = grams(target), grams(prediction)
    overlap = sum(min(count, p[g]) for g, count in t.items())
    precision = overlap / max(sum(p.values()), 1)
    recall = overlap / max(sum(t.values()), 1)
    return precision, recall, _fmeasure(precision, recall)


def _lcs_table(ref: list[str], can: list[str]) -> list[list[int]]:
    """(len(ref)+1, len(can)+1) table: entry [i][j] = LCS length of ref[:i] and can[:j]."""
    table = [[0] * (len(can) + 1) for _ in range(len(ref) + 1)]
    for i in range(1, len(ref) + 1):
        row, above = table[i], table[i - 1]
        for j in range(1, len(can) + 1):
            row[j] = above[j - 1] + 1 if ref[i - 1] == can[j - 1] else max(above[j], row[j - 1])
    return table


def _lcs_indices(ref: list[str], can: list[str]) -> list[int]:
    """Indices into ``ref`` of one LCS, backtracking with rouge-score's tie-break (move up on ties)."""
    table = _lcs_table(ref, can)
    i, j, out = len(ref), len(can), []
    while i > 0 and j > 0:
        if ref[i - 1] == can[j - 1]:
            out.append(i - 1)
            i, j = i - 1, j - 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return out[::-1]


def _rouge_l(target: list[str], prediction: list[str]) -> Score:
    if not target or not prediction:
        return 0.0, 0.0, 0.0
    lcs = _lcs_table(target, prediction)[-1][-1]
    precision, recall = lcs / len(prediction), lcs / len(target)
    return precision, recall, _fmeasure(precision, recall)


def _rouge_lsum(target: list[list[str]], prediction: list[list[str]]) -> Score:
    m, n = sum(map(len, target)), sum(map(len, prediction))
    if not m or not n:
        return 0.0, 0.0, 0.0
    ref_left = Counter(t for sent in target for t in sent)
    can_left = Counter(t for sent in prediction for t in sent)
    hits = 0
    for ref in target:
        union = sorted(set().union(*(_lcs_indices(ref, can) for can in prediction)))
        for token in (ref[i] for i in union):
            if ref_left[token] > 0 and can_left[token] > 0:
                hits += 1
                ref_left[token] -= 1
                can_left[token] -= 1
    precision, recall = hits / n, hits / m
    return precision, recall, _fmeasure(precision, recall)


def _sentences(text: str, use_stemmer: bool) -> list[list[str]]:
    return [tokenize(s, use_stemmer) for s in text.split("\n") if s]


def rouge(predictions: Sequence[str], references: Sequence[str], *, rouge_types: Sequence[str] = ROUGE_TYPES,
          use_stemmer: bool = False) -> list[dict[str, Score]]:
    """ROUGE scores of each prediction against its reference, as rouge-score's
    ``RougeScorer(rouge_types, use_stemmer).score(target=reference, prediction=prediction)``.

    Args:
        predictions: N generated texts.
        references: N reference texts, one per prediction.
        rouge_types: any of ``rouge1`` ... ``rouge9``, ``rougeL``, ``rougeLsum`` (sentences split at newlines).
        use_stemmer: Porter-stem words of more than three letters (needs nltk).
    Returns:
        N dicts mapping each type to ``(precision, recall, fmeasure)``.
    Raises:
        ValueError: an unknown type, ``rouge0``, or lists of different lengths.
    """
    if isinstance(predictions, str) or isinstance(references, str):
        raise ValueError("predictions and references must be lists of strings, one pair per item")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    for kind in rouge_types:
        match = _ROUGE_N.match(kind)
        if kind not in ("rougeL", "rougeLsum") and not (match and int(match.group(1)) > 0):
            raise ValueError(f"unknown ROUGE type {kind!r}: use rouge1..rouge9, rougeL or rougeLsum")
    out = []
    for prediction, reference in zip(predictions, references):
        target, pred = tokenize(reference, use_stemmer), tokenize(prediction, use_stemmer)
        scores = {}
        for kind in rouge_types:
            if kind == "rougeL":
                scores[kind] = _rouge_l(target, pred)
            elif kind == "rougeLsum":
                scores[kind] = _rouge_lsum(_sentences(reference, use_stemmer), _sentences(prediction, use_stemmer))
            else:
                scores[kind] = _rouge_n(target, pred, int(kind[5:]))
        out.append(scores)
    return out
