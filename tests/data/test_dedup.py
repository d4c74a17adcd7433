"""Exact dedup and MinHash-LSH near-dedup on planted near duplicates."""
from __future__ import annotations

import numpy as np

from llmkit.data.dedup import exact_dedup, minhash_signatures, near_duplicate_pairs, near_dedup, shingles
from llmkit.data.document import Document

VOCAB = [f"word{i}" for i in range(3000)]


def random_doc(rng: np.random.Generator, n_words: int = 300) -> str:
    return " ".join(rng.choice(VOCAB, n_words))


def edit_words(text: str, rng: np.random.Generator, n_changes: int) -> str:
    words = text.split()
    for i in rng.choice(len(words), n_changes, replace=False):
        words[i] = "CHANGED"
    return " ".join(words)


def test_exact_dedup_keeps_first_in_order():
    docs = [Document("a", "x"), Document("b", "y"), Document("c", "x")]
    assert [d.title for d in exact_dedup(docs)] == ["a", "b"]


def test_shingles_are_case_and_punctuation_insensitive():
    assert np.array_equal(shingles("The cat, sat on the MAT!", 3), shingles("the cat sat on the mat", 3))
    assert len(shingles("two words", 5)) == 1 and len(shingles("", 5)) == 0


def test_signature_agreement_estimates_jaccard():
    rng = np.random.default_rng(0)
    a = random_doc(rng, 400)
    b = edit_words(a, rng, 20)
    sa, sb = set(shingles(a).tolist()), set(shingles(b).tolist())
    jaccard = len(sa & sb) / len(sa | sb)
    sigs = minhash_signatures([a, b], num_perm=512)
    assert abs(np.mean(sigs[0] == sigs[1]) - jaccard) < 0.06


def test_near_dedup_catches_planted_near_duplicates_only():
    rng = np.random.default_rng(1)
    originals = [random_doc(rng) for _ in range(60)]
    planted = {60 + k: i for k, i in enumerate(range(0, 60, 6))}  # near copy index -> original index
    texts = originals + [edit_words(originals[i], rng, 3) for i in planted.values()]
    docs = [Document(str(i), t) for i, t in enumerate(texts)]
    pairs = near_duplicate_pairs(minhash_signatures(texts))
    assert sorted(pairs) == sorted((orig, copy) for copy, orig in planted.items())
    kept = near_dedup(docs)
    assert [d.title for d in kept] == [str(i) for i in range(60)]  # every original, no copy


def test_near_dedup_merges_chains_into_one_cluster():
    rng = np.random.default_rng(2)
    base = random_doc(rng, 400)
    chain = [base, edit_words(base, rng, 2), edit_words(base, rng, 4), random_doc(rng, 400)]
    kept = near_dedup([Document(str(i), t) for i, t in enumerate(chain)])
    assert [d.title for d in kept] == ["0", "3"]
