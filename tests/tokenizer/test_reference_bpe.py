"""The pure-Python reference BPE, cross-checked against the Rust ``tokenizers`` path.

The two trainers break ties between equally frequent pairs differently, so
their merge lists differ slightly. The exact check is therefore on encoding:
the reference's merges, loaded into a ``tokenizers`` BPE with the same cl100k
split, must encode held-out text to the same ids as the reference does. The
training check is looser: both are the same greedy algorithm, so they learn
mostly the same merges and compress the corpus equally well.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

from llmkit.tokenizer import Tokenizer
from llmkit.tokenizer.backend import byte_level_bpe
from llmkit.tokenizer.bpe import ByteBPE
from llmkit.tokenizer.pretokenizers import cl100k
from llmkit.tokenizer.train import train_bpe

N_MERGES = 300


def _byte_chars() -> list[str]:
    """GPT-2's printable stand-in for each byte: printable Latin-1 stands for itself, the rest shift past 255."""
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    shifted = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(shifted)) for b in range(256)]


BYTE_CHARS = _byte_chars()


def _symbol(data: bytes) -> str:
    return "".join(BYTE_CHARS[b] for b in data)


@pytest.fixture(scope="module")
def train_text() -> str:
    return Path(textwrap.__file__).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def reference(train_text: str) -> ByteBPE:
    return ByteBPE.train(train_text, vocab_size=256 + N_MERGES)


@pytest.fixture(scope="module")
def fast_from_reference(reference: ByteBPE) -> Tokenizer:
    """A ``tokenizers`` BPE holding the reference's vocabulary (same ids) and merges."""
    vocab = {_symbol(t): i for i, t in enumerate(reference.vocab)}
    merges = [(_symbol(reference.vocab[a]), _symbol(reference.vocab[b])) for a, b in reference.merges]
    return Tokenizer(byte_level_bpe(vocab, merges, cl100k()))


def test_byte_chars_match_bytelevel() -> None:
    text = "aé€🤗\n\t "
    assert _symbol(text.encode()) == pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)[0][0]


def test_reference_roundtrip(reference: ByteBPE, sample: str) -> None:
    ids = reference.encode(sample)
    assert reference.decode(ids) == sample
    assert len(ids) <= len(sample.encode())


def test_reference_learns_frequent_pairs(reference: ByteBPE) -> None:
    assert len(reference.merges) == N_MERGES
    assert reference.vocab[256] == b"  "  # indentation is the most frequent pair in Python source
    assert b" return" in reference.vocab and b" the" in reference.vocab


def test_same_merges_same_encoding(reference: ByteBPE, fast_from_reference: Tokenizer, sample: str) -> None:
    assert fast_from_reference.encode(sample) == reference.encode(sample)


def test_same_merges_same_encoding_held_out_source(reference: ByteBPE, fast_from_reference: Tokenizer) -> None:
    text = Path(json.decoder.__file__).read_text(encoding="utf-8")
    assert fast_from_reference.encode(text) == reference.encode(text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_same_merges_same_encoding_any_text(reference: ByteBPE, fast_from_reference: Tokenizer, text: str) -> None:
    ids = reference.encode(text)
    assert fast_from_reference.encode(text) == ids
    assert reference.decode(ids) == text


def test_trainers_agree_up_to_ties(reference: ByteBPE, train_text: str) -> None:
    fast = train_bpe([train_text], vocab_size=256 + N_MERGES + 2, special_tokens=[], min_frequency=2)
    fast_merges = {tuple(m) for m in json.loads(fast.to_str())["model"]["merges"]}
    ours = {(_symbol(reference.vocab[a]), _symbol(reference.vocab[b])) for a, b in reference.merges}
    assert len(ours & fast_merges) >= 0.9 * N_MERGES
    n_fast, n_ours = len(fast.encode(train_text).ids), len(reference.encode(train_text))
    assert abs(n_fast - n_ours) <= 0.01 * n_ours
