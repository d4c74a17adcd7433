"""Mixing sources by character weights."""
from __future__ import annotations

import pytest

from llmkit.data.document import Document
from llmkit.data.mix import mix


def source(name: str, n: int, size: int) -> list[Document]:
    return [Document(f"{name}{i}", "x" * size, source=name) for i in range(n)]


def shares(docs: list[Document]) -> dict[str, float]:
    total = sum(len(d.text) for d in docs)
    return {s: sum(len(d.text) for d in docs if d.source == s) / total for s in {d.source for d in docs}}


def test_mix_hits_weights_and_upsamples_small_sources():
    sources = {"big": source("big", 900, 100), "small": source("small", 10, 100)}
    docs = mix(sources, {"big": 1, "small": 1}, seed=0)
    assert shares(docs) == pytest.approx({"big": 0.5, "small": 0.5}, abs=0.01)
    small = [d.title for d in docs if d.source == "small"]
    assert len(small) == 455 and set(small) == {f"small{i}" for i in range(10)}  # ~45 passes over 10 docs


def test_mix_is_deterministic_and_order_independent():
    a, b = source("a", 50, 10), source("b", 50, 30)
    first = mix({"a": a, "b": b}, {"a": 3, "b": 1}, seed=7, total_chars=2000)
    assert first == mix({"b": b, "a": a}, {"b": 1, "a": 3}, seed=7, total_chars=2000)
    assert first != mix({"a": a, "b": b}, {"a": 3, "b": 1}, seed=8, total_chars=2000)
    assert shares(first)["a"] == pytest.approx(0.75, abs=0.02)


def test_mix_zero_weight_and_errors():
    docs = mix({"a": source("a", 5, 10), "b": source("b", 5, 10)}, {"a": 1, "b": 0})
    assert {d.source for d in docs} == {"a"}
    with pytest.raises(ValueError, match="weights name"):
        mix({"a": source("a", 1, 1)}, {"b": 1})
    with pytest.raises(ValueError, match="non-negative"):
        mix({"a": source("a", 1, 1)}, {"a": -1})
    with pytest.raises(ValueError, match="no text"):
        mix({"a": source("a", 1, 1), "e": []}, {"a": 1, "e": 1})
