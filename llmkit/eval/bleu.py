"""BLEU (Papineni et al., 2002) exactly as sacrebleu computes it, without sacrebleu.

Scores from different BLEU implementations differ by whole points because of
tokenization and smoothing, so this one follows sacrebleu 2.x step by step:
the same tokenizers (``13a`` = mteval-v13a, ``intl`` = mteval-v14
international, ``char``, ``none``), the same n-gram statistics (clipped counts
against the per-n-gram maximum over references, the closest reference length,
ties to the shorter), the same smoothing (Chen & Cherry 2014: ``none``,
``floor``, ``add-k``, ``exp``) and the same floating-point order of
operations, so :attr:`BLEUResult.score` equals ``sacrebleu.corpus_bleu(...).score``
to the last bit (tests/eval/test_bleu.py checks hundreds of random and real pairs).

``references`` is a list of reference *streams*, as in sacrebleu: with two
references per sentence, ``[[ref1_a, ref1_b, ...], [ref2_a, ref2_b, ...]]``;
a ``None`` in a stream means "no reference here" for that sentence.
"""
from __future__ import annotations

import functools
import itertools
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

MAX_ORDER = 4
_PLANE_2 = 0x20000
Tokenize = Literal["13a", "intl", "none", "char"]
SmoothMethod = Literal["exp", "floor", "add-k", "none"]
SMOOTH_DEFAULTS = {"none": None, "floor": 0.1, "add-k": 1, "exp": None}  # sacrebleu's BLEU.SMOOTH_DEFAULTS

# mteval-v13a's language-dependent part (sacrebleu's TokenizerRegexp)
_13A_RULES = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # symbols and punctuation
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period and comma unless preceded by a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # ... unless followed by a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash after a digit
]


@dataclass(frozen=True)
class BLEUResult:
    """A BLEU score and the statistics it came from.

    Attributes:
        score: BLEU in 0-100.
        counts: matched n-grams for n = 1..4 (after add-k smoothing, as sacrebleu reports them).
        totals: hypothesis n-grams for n = 1..4.
        precisions: the (smoothed) n-gram precisions in percent.
        bp: the brevity penalty.
        sys_len: total hypothesis length in tokens.
        ref_len: total length of the closest references.
    """

    score: float
    counts: list[float]
    totals: list[float]
    precisions: list[float]
    bp: float
    sys_len: int
    ref_len: int

    def __str__(self) -> str:  # sacrebleu's format
        ratio = self.sys_len / self.ref_len if self.ref_len else 0
        prec = "/".join(f"{p:.1f}" for p in self.precisions)
        return (f"BLEU = {self.score:.2f} {prec} (BP = {self.bp:.3f} ratio = {ratio:.3f} "
                f"hyp_len = {self.sys_len:d} ref_len = {self.ref_len:d})")


def _tokenize_13a(line: str) -> str:
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, repl in _13A_RULES:
        line = pattern.sub(repl, line)
    return " ".join(line.split())


@functools.cache
def _intl_rules() -> list[tuple[re.Pattern, str]]:
    """mteval-v14's rules; ``re`` lacks ``\\p{N}``/``\\p{P}``/``\\p{S}``, so their classes are built from
    :mod:`unicodedata` in one pass over the code points, once, on first use. Only planes 0 and 1 are
    read: planes 2-16 hold ideographs, tags, variation selectors and private use, none of them N, P or S."""
    ranges: dict[str, list[str]] = {"N": [], "P": [], "S": []}
    for major, run in itertools.groupby(range(_PLANE_2), lambda cp: unicodedata.category(chr(cp))[0]):
        if major in ranges:
            first, *rest = run
            last = rest[-1] if rest else first
            ranges[major].append(f"\\U{first:08x}-\\U{last:08x}")
    n, p, s = ("".join(ranges[c]) for c in "NPS")
    return [
        (re.compile(f"([^{n}])([{p}])"), r"\1 \2 "),  # punctuation after a non-digit
        (re.compile(f"([{p}])([^{n}])"), r" \1 \2"),  # punctuation before a non-digit
        (re.compile(f"([{s}])"), r" \1 "),  # symbols
    ]


def _tokenize_intl(line: str) -> str:
    for pattern, repl in _intl_rules():
        line = pattern.sub(repl, line)
    return " ".join(line.split())


TOKENIZERS: dict[str, Callable[[str], str]] = {
    "13a": functools.lru_cache(maxsize=2**16)(_tokenize_13a),
    "intl": functools.lru_cache(maxsize=2**16)(_tokenize_intl),
    "char": lambda line: " ".join(line),
    "none": lambda line: line,
}


def _ngrams(line: str) -> tuple[Counter, int]:
    """Counts of every 1..4-gram of a tokenized line, and its length in tokens."""
    tokens = line.split()
    grams = Counter(tuple(tokens[i:i + n]) for n in range(1, MAX_ORDER + 1) for i in range(len(tokens) - n + 1))
    return grams, len(tokens)


def _closest_ref_len(hyp_len: int, ref_lens: list[int]) -> int:
    """The reference length closest to the hypothesis length; ties go to the shorter."""
    return min(ref_lens, key=lambda r: (abs(hyp_len - r), r))


def _segment_stats(hyp: str, refs: list[str]) -> list[int]:
    """``[hyp_len, ref_len, correct_1..4, total_1..4]`` for one tokenized sentence."""
    ref_grams: Counter = Counter()
    ref_lens = []
    for ref in refs:
        grams, length = _ngrams(ref)
        ref_lens.append(length)
        ref_grams |= grams  # per n-gram maximum over the references
    hyp_grams, hyp_len = _ngrams(hyp)
    correct, total = [0] * MAX_ORDER, [0] * MAX_ORDER
    for gram, count in hyp_grams.items():
        total[len(gram) - 1] += count
        correct[len(gram) - 1] += min(count, ref_grams[gram])
    return [hyp_len, _closest_ref_len(hyp_len, ref_lens)] + correct + total


def _log(x: float) -> float:
    return math.log(x) if x != 0.0 else -9999999999  # sacrebleu's my_log floor


def _compute(stats: list[int], smooth_method: str, smooth_value: float | None, effective_order: bool) -> BLEUResult:
    sys_len, ref_len = stats[0], stats[1]
    correct, total = list(stats[2:2 + MAX_ORDER]), list(stats[2 + MAX_ORDER:])
    if smooth_value is None:
        smooth_value = SMOOTH_DEFAULTS[smooth_method]
    bp = 1.0
    if sys_len < ref_len:
        bp = math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0
    precisions = [0.0] * MAX_ORDER
    if not any(correct):
        return BLEUResult(0.0, correct, total, precisions, bp, sys_len, ref_len)
    smooth_mteval, eff_order = 1.0, MAX_ORDER
    for n in range(1, MAX_ORDER + 1):
        if smooth_method == "add-k" and n > 1:
            correct[n - 1] += smooth_value
            total[n - 1] += smooth_value
        if total[n - 1] == 0:
            break
        if effective_order:
            eff_order = n
        if correct[n - 1] == 0:
            if smooth_method == "exp":
                smooth_mteval *= 2
                precisions[n - 1] = 100. / (smooth_mteval * total[n - 1])
            elif smooth_method == "floor":
                precisions[n - 1] = 100. * smooth_value / total[n - 1]
        else:
            precisions[n - 1] = 100. * correct[n - 1] / total[n - 1]
    score = bp * math.exp(sum([_log(p) for p in precisions[:eff_order]]) / eff_order)
    return BLEUResult(score, correct, total, precisions, bp, sys_len, ref_len)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str | None]], *,
                tokenize: Tokenize = "13a", smooth_method: SmoothMethod = "exp", smooth_value: float | None = None,
                lowercase: bool = False, use_effective_order: bool = False) -> BLEUResult:
    """Corpus BLEU of ``hypotheses`` against one or more reference streams, as ``sacrebleu.corpus_bleu``.

    Args:
        hypotheses: N system outputs, one per sentence (detokenized).
        references: R reference streams, each of N strings (``None`` = no reference for that sentence).
        tokenize: ``13a`` (WMT's default), ``intl`` (splits Unicode punctuation and symbols),
            ``char`` (characters) or ``none`` (the text is already tokenized).
        smooth_method: ``exp`` (NIST), ``floor``, ``add-k`` or ``none``.
        smooth_value: epsilon for ``floor`` (default 0.1), k for ``add-k`` (default 1).
        lowercase: compare case-insensitively.
        use_effective_order: average only over n-gram orders the hypotheses have (sentence-level BLEU).
    Returns:
        The :class:`BLEUResult`.
    Raises:
        ValueError: an unknown tokenizer or smoothing, no references, or a stream whose length is not N.
    """
    if tokenize not in TOKENIZERS:
        raise ValueError(f"tokenize={tokenize!r} is not one of {', '.join(TOKENIZERS)}")
    if smooth_method not in SMOOTH_DEFAULTS:
        raise ValueError(f"smooth_method={smooth_method!r} is not one of {', '.join(SMOOTH_DEFAULTS)}")
    if isinstance(hypotheses, str) or not references or isinstance(references[0], str):
        raise ValueError("hypotheses must be a list of strings and references a list of reference streams "
                         "(lists of strings), e.g. corpus_bleu(['a b'], [['a b c']])")
    for i, stream in enumerate(references):
        if len(stream) != len(hypotheses):
            raise ValueError(f"reference stream {i} has {len(stream)} lines but there are {len(hypotheses)} "
                             "hypotheses")
    tok = TOKENIZERS[tokenize]

    def prep(line: str) -> str:
        return tok((line.lower() if lowercase else line).rstrip())

    stats = [0] * (2 + 2 * MAX_ORDER)
    for hyp, refs in zip(hypotheses, zip(*references)):
        seg = _segment_stats(prep(hyp), [prep(r) for r in refs if r is not None])
        stats = [a + b for a, b in zip(stats, seg)]
    return _compute(stats, smooth_method, smooth_value, use_effective_order)


def sentence_bleu(hypothesis: str, references: Sequence[str], *, tokenize: Tokenize = "13a",
                  smooth_method: SmoothMethod = "exp", smooth_value: float | None = None, lowercase: bool = False,
                  use_effective_order: bool = True) -> BLEUResult:
    """BLEU of one sentence against its references, as ``sacrebleu.sentence_bleu`` (effective order on).

    Args:
        hypothesis: the system output.
        references: one or more reference strings for it.
        tokenize, smooth_method, smooth_value, lowercase, use_effective_order: as in :func:`corpus_bleu`.
    """
    if isinstance(references, str):
        raise ValueError("references must be a list of strings, e.g. sentence_bleu('a b', ['a b c'])")
    return corpus_bleu([hypothesis], [[r] for r in references], tokenize=tokenize, smooth_method=smooth_method,
                       smooth_value=smooth_value, lowercase=lowercase, use_effective_order=use_effective_order)
