"""Length and Gopher repetition filters."""
from __future__ import annotations

import numpy as np

from llmkit.data.document import Document
from llmkit.data.quality import (QualityConfig, clean_documents, duplicate_line_fractions,
                                 duplicate_ngram_char_fraction, quality_issue, top_ngram_char_fraction)


def prose(n_words: int, seed: int = 0) -> str:
    """Random words from a large vocabulary: no repetition to speak of."""
    rng = np.random.default_rng(seed)
    return " ".join(f"w{i}" for i in rng.integers(0, 100_000, n_words))


def test_duplicate_lines():
    assert duplicate_line_fractions("a\nb\n\na\na") == (0.5, 0.5)  # blank lines do not count
    assert duplicate_line_fractions("") == (0.0, 0.0)


def test_top_ngram_fraction():
    text = "the cat sat the cat ran"  # "the cat" twice: 2 * 6 chars of 18 word chars
    assert top_ngram_char_fraction(text, 2) == 12 / 18
    assert top_ngram_char_fraction("a b c d", 2) == 0.0  # nothing repeats
    assert top_ngram_char_fraction("a b", 3) == 0.0


def test_duplicate_ngram_fraction_counts_repeats_not_first_occurrences():
    assert duplicate_ngram_char_fraction("a b c x a b c", 3) == 3 / 7
    assert duplicate_ngram_char_fraction(prose(500), 5) == 0.0


def test_quality_issue_rules():
    config = QualityConfig(min_chars=10, max_chars=10_000)
    assert quality_issue(prose(300), config) is None
    assert quality_issue("short", config).startswith("too_short")
    assert quality_issue(prose(3000), config).startswith("too_long")
    looping = "\n".join(["buy cheap watches now"] * 30 + [prose(100)])
    assert quality_issue(looping).startswith("dup_line_frac")
    spammy = " ".join([prose(100)] + ["click here"] * 40)
    assert quality_issue(spammy).startswith("top_2gram_char_frac")
    copied = prose(100, seed=1) + "\n" + prose(100, seed=1)[:-50] + " " + prose(100, seed=2)
    assert quality_issue(copied).startswith("dup_5gram_char_frac")
    assert quality_issue("a man a plan a canal") is None  # under 50 words: repetition rules skipped


def test_clean_documents_normalises_and_reports():
    docs = [Document("ok", prose(200) + "  \r\n"), Document("empty", " \n "),
            Document("loop", "\n".join(["same line here"] * 60))]
    kept, dropped = clean_documents(docs)
    assert [d.title for d in kept] == ["ok"] and not kept[0].text.endswith(" ")
    assert dropped == {"too_short": 1, "dup_line_frac": 1}
