"""Splitting: every chunk within budget, cut only between sentences when sentences fit, nothing lost."""
from __future__ import annotations

import random

import pytest

from llmkit.longdoc import sentences, split_text


def words(s: str) -> int:
    return len(s.split())


def test_sentences_end_at_punctuation_and_blank_lines():
    text = 'He said "Stop." Then left!  Why?\n\nA heading\nand its line'
    assert sentences(text) == ['He said "Stop."', "Then left!", "Why?", "A heading and its line"]


def test_chunks_fit_keep_sentences_whole_and_lose_nothing():
    rng = random.Random(0)
    sents = [" ".join(rng.choice(["the", "cat", "sat", "on", "a", "mat"]) for _ in range(rng.randint(1, 9))) + "."
             for _ in range(200)]
    text = "  ".join(sents)
    chunks = split_text(text, words, 20)
    assert all(words(c) <= 20 for c in chunks)
    assert " ".join(chunks) == " ".join(text.split())
    assert all(c.endswith(".") for c in chunks)  # every sentence fits, so every cut is between sentences
    # greedy: no chunk could have taken the next chunk's first sentence
    for a, b in zip(chunks, chunks[1:]):
        assert words(a + " " + sentences(b)[0]) > 20


def test_an_overlong_sentence_is_cut_at_words_then_characters():
    chunks = split_text("one two three four five six seven. " + "x" * 10 + " end.", len, 9)
    assert all(len(c) <= 9 for c in chunks)
    text = "one two three four five six seven. " + "x" * 10 + " end."
    assert "".join(chunks).replace(" ", "") == text.replace(" ", "")


def test_bad_budget_and_empty_text():
    with pytest.raises(ValueError, match="chunk_tokens"):
        split_text("a.", words, 0)
    assert split_text(" \n ", words, 5) == []
