"""The fixed train/validation split."""
from __future__ import annotations

import pytest

from llmkit.data.document import Document
from llmkit.data.split import HELD_OUT, split_documents


def corpus(n: int) -> list[Document]:
    return [Document(f"work {i % 7}", f"text number {i}", section=str(i)) for i in range(n)]


def test_named_held_out_works():
    docs = [Document(t, "x" * 10) for t in ["Emma", "Persuasion", "Persuasion", "Pride and Prejudice"]]
    train, val = split_documents(docs, "austen")
    assert [d.title for d in val] == ["Persuasion", "Persuasion"]
    assert [d.title for d in train] == ["Emma", "Pride and Prejudice"]
    assert len(HELD_OUT["shakespeare"]) == 4
    with pytest.raises(ValueError, match="lacks its held-out works"):
        split_documents(docs[:1], "austen")


def test_hash_split_is_deterministic_and_order_free():
    docs = corpus(2000)
    train, val = split_documents(docs)
    assert len(train) + len(val) == 2000 and not set(train) & set(val)
    assert 0.03 < len(val) / 2000 < 0.07
    _, rval = split_documents(list(reversed(docs)))
    assert set(rval) == set(val)  # membership is a function of the document alone
    assert set(split_documents(docs[:500])[1]) == set(val) & set(docs[:500])  # adding documents moves none
    assert split_documents(docs, val_fraction=0.2)[1] != val


def test_small_corpora_always_get_a_validation_document():
    train, val = split_documents(corpus(3))
    assert len(val) >= 1 and len(train) + len(val) == 3


def test_single_document_holds_out_its_tail_at_a_line_break():
    doc = Document("input", "\n".join(f"line {i}" for i in range(100)))
    (train,), (val,) = split_documents([doc], val_fraction=0.1)
    assert train.text + val.text == doc.text
    assert train.text.endswith("\n") and val.text.startswith("line ")
    assert 0.08 < len(val.text) / len(doc.text) < 0.12
    assert val.section == "tail"
