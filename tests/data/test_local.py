"""The user's own data: text files, folders, JSON lines, Parquet."""
from __future__ import annotations

import json
import sys

import pytest

from llmkit.data.local import load_local


def test_txt_file_and_folder(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("First\r\ndocument.  \n")
    (tmp_path / "b" / "c.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "skip.md").write_text("not text data")
    one = load_local(tmp_path / "a.txt")
    assert [(d.title, d.text) for d in one] == [("a", "First\ndocument.")]
    docs = load_local(tmp_path)
    assert [(d.title, d.text) for d in docs] == [("a", "First\ndocument."), ("b/c", "café")]
    assert docs[0].source == str(tmp_path)


def test_jsonl_field_and_titles(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"body": "one", "title": "T"}, {"body": "two"}]) + "\n")
    docs = load_local(path, field="body")
    assert [(d.title, d.text) for d in docs] == [("T", "one"), ("d:2", "two")]
    with pytest.raises(ValueError, match="has no field 'text'"):
        load_local(path)


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["alpha", None, "beta"]}), tmp_path / "d.parquet")
    assert [d.text for d in load_local(tmp_path / "d.parquet")] == ["alpha", "beta"]


def test_unknown_suffix(tmp_path):
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="expected a folder"):
        load_local(tmp_path / "x.csv")


def test_parquet_without_pyarrow_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes "import pyarrow..." raise ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    with pytest.raises(ImportError, match="pip install pyarrow"):
        load_local(tmp_path / "d.parquet")
