"""BLEU equals sacrebleu's to the last bit on random and real pairs, for every tokenizer and smoothing."""
from __future__ import annotations

import pytest

from llmkit.eval import corpus_bleu, sentence_bleu
from tests.eval.text_pairs import real_pairs, soup_pairs

sacrebleu = pytest.importorskip("sacrebleu")

PAIRS = {"soup": soup_pairs(300, seed=0), "real": real_pairs(300, seed=1)}


def same(ours, ref) -> None:
    assert ours.score == ref.score, (ours, ref)  # bit-identical, so every printed digit agrees
    assert (ours.precisions, ours.bp, ours.sys_len, ours.ref_len) == (ref.precisions, ref.bp, ref.sys_len, ref.ref_len)
    assert (ours.counts, ours.totals) == (ref.counts, ref.totals)
    assert str(ours) == str(ref)[:len(str(ours))]


@pytest.mark.parametrize("kind", PAIRS)
@pytest.mark.parametrize("tokenize", ["13a", "intl", "none", "char"])
def test_corpus_bleu_matches_sacrebleu(kind, tokenize):
    hyps, refs1, refs2 = map(list, zip(*PAIRS[kind][:100 if tokenize == "char" else 300]))
    for smooth_method in ("exp", "floor", "add-k", "none"):
        kw = dict(tokenize=tokenize, smooth_method=smooth_method)
        same(corpus_bleu(hyps, [refs1], **kw), sacrebleu.corpus_bleu(hyps, [refs1], **kw))
    kw = dict(tokenize=tokenize, lowercase=True)
    same(corpus_bleu(hyps, [refs1, refs2], **kw), sacrebleu.corpus_bleu(hyps, [refs1, refs2], **kw))


@pytest.mark.parametrize("kind", PAIRS)
@pytest.mark.parametrize("tokenize", ["13a", "intl", "char"])
def test_sentence_bleu_matches_sacrebleu(kind, tokenize):
    for smooth_method in ("exp", "floor", "add-k", "none"):
        for hyp, ref1, ref2 in PAIRS[kind][:60]:
            kw = dict(tokenize=tokenize, smooth_method=smooth_method)
            same(sentence_bleu(hyp, [ref1, ref2], **kw), sacrebleu.sentence_bleu(hyp, [ref1, ref2], **kw))


def test_missing_references_and_values():
    """A None in a stream drops that reference for that sentence; smooth_value as sacrebleu's."""
    hyps, refs1, refs2 = map(list, zip(*PAIRS["real"][:50]))
    refs2 = [None if i % 3 else r for i, r in enumerate(refs2)]
    same(corpus_bleu(hyps, [refs1, refs2]), sacrebleu.corpus_bleu(hyps, [refs1, refs2]))
    same(corpus_bleu(hyps, [refs1], smooth_method="floor", smooth_value=0.3),
         sacrebleu.corpus_bleu(hyps, [refs1], smooth_method="floor", smooth_value=0.3))


def test_defining_properties():
    assert corpus_bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]).score == pytest.approx(100)
    assert corpus_bleu(["dog"], [["the cat sat on the mat"]]).score == 0.0
    short = corpus_bleu(["the cat sat"], [["the cat sat on the mat"]], smooth_method="none", use_effective_order=True)
    assert short.bp == pytest.approx(2.718281828 ** (1 - 6 / 3)) and short.precisions[:3] == [100.0] * 3


def test_bad_input():
    with pytest.raises(ValueError, match="reference stream 0 has 1 lines but there are 2"):
        corpus_bleu(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="reference streams"):
        corpus_bleu(["a"], ["a"])
    with pytest.raises(ValueError, match="tokenize='zh'"):
        corpus_bleu(["a"], [["a"]], tokenize="zh")
    with pytest.raises(ValueError, match="smooth_method"):
        corpus_bleu(["a"], [["a"]], smooth_method="add-one")
