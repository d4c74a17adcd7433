"""ROUGE equals rouge-score's RougeScorer.score(target=reference, prediction=...) exactly, stemmed or not."""
from __future__ import annotations

import pytest

from llmkit.eval import rouge
from llmkit.eval.rouge import tokenize
from tests.eval.text_pairs import real_pairs, soup_pairs

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

TYPES = ("rouge1", "rouge2", "rouge3", "rougeL", "rougeLsum")
PAIRS = {"soup": soup_pairs(300, seed=2), "real": real_pairs(300, seed=3)}


@pytest.mark.parametrize("kind", PAIRS)
@pytest.mark.parametrize("use_stemmer", [False, True])
def test_matches_rouge_score(kind, use_stemmer):
    preds = [h for h, _, _ in PAIRS[kind]]
    # several sentences per reference, so rougeLsum's union LCS is exercised
    refs = [f"{r}\n{r2}" if i % 2 else r for i, (_, r, r2) in enumerate(PAIRS[kind])]
    scorer = rouge_scorer.RougeScorer(list(TYPES), use_stemmer=use_stemmer)
    ours = rouge(preds, refs, rouge_types=TYPES, use_stemmer=use_stemmer)
    for pred, ref, got in zip(preds, refs, ours):
        expected = scorer.score(target=ref, prediction=pred)
        assert got == {k: tuple(v) for k, v in expected.items()}, (pred, ref)


def test_defining_properties():
    (same,) = rouge(["The cat sat."], ["the cat sat"])
    assert all(v == (1.0, 1.0, 1.0) for v in same.values())
    (half,) = rouge(["the cat"], ["the cat sat on it"], rouge_types=("rouge1",))
    assert half["rouge1"][:2] == (1.0, 2 / 5)
    assert tokenize("Running dogs, happily!", use_stemmer=True) == ["run", "dog", "happili"]
    assert rouge([""], ["text"])[0]["rougeL"] == (0.0, 0.0, 0.0)


def test_bad_input():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="unknown ROUGE type 'rouge0'"):
        rouge(["a"], ["a"], rouge_types=("rouge0",))
    with pytest.raises(ValueError, match="lists of strings"):
        rouge("a", "a")
