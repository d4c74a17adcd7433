"""Training a byte-level BPE, and saving it in the HF layout that transformers reads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmkit.tokenizer import CHATML_TEMPLATE, Tokenizer


def test_trained_layout(trained: Tokenizer) -> None:
    assert trained.vocab_size == 1000
    assert trained.special_tokens == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    assert (trained.bos_id, trained.eos_id, trained.pad_id) == (None, 0, 0)
    assert trained.chat_template == CHATML_TEMPLATE
    assert trained.encode("hi") == trained.encode("hi", add_special_tokens=False)  # no BOS


def test_every_byte_is_a_token(trained: Tokenizer) -> None:
    # A byte the corpus never contained still encodes, as its own token.
    text = "\x00\x7f\U000e0001"
    ids = trained.encode(text)
    assert len(ids) == 1 + 1 + 4 and trained.decode(ids) == text


def test_uses_the_gpt4_split(trained: Tokenizer) -> None:
    # cl100k: numbers in groups of at most three digits, contractions split off,
    # and no token crosses a split.
    enc = trained.encode
    assert enc("1234567") == enc("123") + enc("456") + enc("7")
    assert enc("don't") == enc("don") + enc("'t")
    assert enc("x  = 1") == enc("x") + enc(" ") + enc(" =") + enc(" ") + enc("1")


def test_special_tokens_first_and_chatml_always_present() -> None:
    tok = Tokenizer.train(["aaa bbb ccc " * 20], vocab_size=300, special_tokens=["<eos>", "<pad>"])
    assert tok.special_tokens == {"<eos>": 0, "<pad>": 1, "<|im_start|>": 2, "<|im_end|>": 3}
    assert tok.eos_token == tok.pad_token == "<eos>"
    assert tok.encode("<pad>aaa")[0] == 1


def test_train_from_files(tmp_path: Path, corpus: str) -> None:
    file = tmp_path / "corpus.txt"
    file.write_text(corpus, encoding="utf-8")
    from_file = Tokenizer.train([file], vocab_size=1000)
    from_lines = Tokenizer.train(corpus.splitlines(keepends=True), vocab_size=1000)
    assert from_file.backend.to_str() == from_lines.backend.to_str()


def test_min_frequency_stops_merging() -> None:
    tok = Tokenizer.train(["ab ab ab cd"], vocab_size=1000, min_frequency=3)
    assert tok.token_to_id("ab") is not None and tok.token_to_id("cd") is None
    assert tok.vocab_size < 1000


def test_vocab_too_small() -> None:
    with pytest.raises(ValueError, match="vocab_size=200 is too small"):
        Tokenizer.train(["x"], vocab_size=200)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_roundtrip_any_text(trained: Tokenizer, text: str) -> None:
    assert trained.decode(trained.encode(text)) == text


def test_save_pretrained_files(trained: Tokenizer, tmp_path: Path) -> None:
    trained.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>" and config["chat_template"] == CHATML_TEMPLATE
    assert json.loads((tmp_path / "special_tokens_map.json").read_text()) == {
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"
    }


def test_save_load_roundtrip(trained: Tokenizer, tmp_path: Path, sample: str) -> None:
    trained.save_pretrained(tmp_path)
    loaded = Tokenizer.from_pretrained(tmp_path)
    assert loaded.encode(sample) == trained.encode(sample)
    assert (loaded.eos_token, loaded.pad_token, loaded.chat_template) == ("<|endoftext|>",) * 2 + (CHATML_TEMPLATE,)
    bare = Tokenizer.from_pretrained(tmp_path / "tokenizer.json")
    assert bare.encode(sample) == trained.encode(sample) and bare.eos_token is None


def test_autotokenizer_parity(trained: Tokenizer, hf_trained, sample: str) -> None:
    ids = trained.encode(sample)
    assert ids == hf_trained.encode(sample)
    for skip in (False, True):
        assert trained.decode(ids, skip_special_tokens=skip) == hf_trained.decode(ids, skip_special_tokens=skip)
    assert (hf_trained.eos_token_id, hf_trained.pad_token_id, hf_trained.bos_token) == (0, 0, None)
