"""Conversation files: both line layouts read, errors name the line, writing round-trips."""
import json

import pytest

from llmkit.data import read_conversations, write_conversations

CONV = [{"role": "user", "content": "Qui êtes-vous ?"}, {"role": "assistant", "content": "Un modèle."}]


def test_reads_messages_records_and_bare_lists_skipping_blank_lines(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": CONV}) + "\n\n" + json.dumps(CONV[:1]) + "\n", encoding="utf-8")
    assert read_conversations(path) == [CONV, CONV[:1]]


def test_a_bad_line_is_named(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": CONV}) + "\n" + json.dumps({"text": "no messages"}) + "\n")
    with pytest.raises(ValueError, match=r"chats.jsonl:2: expected"):
        read_conversations(path)


def test_write_then_read_round_trips_and_leaves_no_temp_file(tmp_path):
    path = write_conversations(tmp_path / "sub" / "chats.jsonl", [CONV, CONV[::-1]])
    assert read_conversations(path) == [CONV, CONV[::-1]]
    assert "ê" in path.read_text(encoding="utf-8")  # UTF-8 text, not \u escapes
    assert [p.name for p in path.parent.iterdir()] == ["chats.jsonl"]
