"""The generated chat SFT sets."""
from __future__ import annotations

import json

import pytest

from llmkit.data import corpora
from llmkit.data.chat import CHAT_SETS, chat_set_path, load_chat_set, make_chat_set
from llmkit.data.corpora import AUSTEN_NOVELS, SHAKESPEARE_POEMS
from llmkit.data.document import Document
from llmkit.data.split import HELD_OUT
from llmkit.fetch import FetchError


def novel_docs() -> list[Document]:
    return [Document(title, "\n".join(f"{title} chapter {c} line {i}." for i in range(40)), "austen",
                     "Jane Austen", f"CHAPTER {c}")
            for title in AUSTEN_NOVELS.values() for c in range(3)]


def test_make_chat_set_shapes_and_answers():
    docs = novel_docs()
    convs = make_chat_set(docs, 300, seed=0, work_noun="novel")
    assert len(convs) == 300
    assert all([m["role"] for m in c] == ["user", "assistant"] for c in convs)
    kinds = {c[0]["content"].split()[0] for c in convs}
    assert kinds == {"Which", "Continue", "Who"}
    for user, reply in convs:
        question, answer = user["content"], reply["content"]
        if question.startswith("Which novel is this passage from?"):
            passage = question.split("\n\n", 1)[1]
            assert passage.split(" chapter")[0] == answer  # the fake lines name their novel
        elif question.startswith("Continue this passage:"):
            last = question.rsplit("line ", 1)[1]
            assert answer.split("line ", 1)[1].split(".")[0] == str(int(last.rstrip(".")) + 1)  # the next line
        else:
            assert answer == f"Jane Austen wrote {question[len('Who wrote '):-1]}."


def test_make_chat_set_is_deterministic():
    docs = novel_docs()
    assert make_chat_set(docs, 50, seed=3) == make_chat_set(docs, 50, seed=3)
    assert make_chat_set(docs, 50, seed=3) != make_chat_set(docs, 50, seed=4)
    no_author = [Document("T", "some text\nmore text") for _ in range(3)]
    assert not any(c[0]["content"].startswith("Who") for c in make_chat_set(no_author, 50))


def test_named_set_val_comes_from_held_out_documents(cache, monkeypatch):
    monkeypatch.setitem(corpora.CORPORA, "austen", novel_docs)
    train, val = load_chat_set("austen-chat", "train"), load_chat_set("austen-chat", "val")
    spec = CHAT_SETS["austen-chat"]
    assert (len(train), len(val)) == (spec.train_size, spec.val_size)
    assert all("Persuasion chapter" not in c[0]["content"] + c[1]["content"] for c in train)
    assert {c[1]["content"] for c in val if c[0]["content"].startswith("Which")} == {"Persuasion"}
    path = chat_set_path("austen-chat", "val")
    assert path.parent == cache / "data" / "austen-chat"
    assert json.loads(path.read_text().splitlines()[0])["messages"] == val[0]
    assert load_chat_set(str(path)) == val  # a path works as well as a name
    with pytest.raises(ValueError, match="split"):
        chat_set_path("austen-chat", "test")


@pytest.mark.slow
def test_shakespeare_chat_from_the_real_corpus(cache):
    try:
        train, val = load_chat_set("shakespeare-chat", "train"), load_chat_set("shakespeare-chat", "val")
    except FetchError as e:
        pytest.skip(str(e))
    train_titles = {c[1]["content"] for c in train if c[0]["content"].startswith("Which play")}
    val_titles = {c[1]["content"] for c in val if c[0]["content"].startswith("Which play")}
    assert val_titles == HELD_OUT["shakespeare"]
    assert len(train_titles) > 30 and not train_titles & (HELD_OUT["shakespeare"] | SHAKESPEARE_POEMS)
