"""SmolLM2's tokenizer read from its GGUF: parity with transformers' reading of the same file.

One known, deliberate difference: the file's ``tokenizer.ggml.pre`` is
"smollm", which (in llama.cpp, and in SmolLM2's original ``tokenizer.json``)
isolates every Unicode number character before GPT-2's split. transformers'
GGUF loader has no entry for "smollm" and uses GPT-2's split alone, which
differs next to numbers: "\n  2" is ["\n ", " ", "2"] there but ["\n  ",
"2"] for the model's own tokenizer, and " ¼" keeps its space. So we compare
against transformers as is on text without numbers, and against transformers
with SmolLM2's digit split restored (fixture ``hf_smollm2_digits``) on any text.
"""
from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

from llmkit.tokenizer import Tokenizer
_BYTE_LEVEL = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)


def _encodable(tok: Tokenizer, char: str) -> bool:
    """Whether every UTF-8 byte of ``char`` has a token in the vocabulary."""
    return all(tok.token_to_id(b) is not None for b in _BYTE_LEVEL.pre_tokenize_str(char)[0][0])


def _without_numbers(text: str) -> str:
    return "".join(c for c in text if not unicodedata.category(c).startswith("N"))


def test_special_tokens_match_transformers(smollm2: Tokenizer, hf_smollm2) -> None:
    assert (smollm2.bos_id, smollm2.eos_id, smollm2.pad_id) == (
        hf_smollm2.bos_token_id, hf_smollm2.eos_token_id, hf_smollm2.pad_token_id
    )
    assert smollm2.unk_token == hf_smollm2.unk_token
    assert smollm2.vocab_size == len(hf_smollm2) == 49152
    assert smollm2.special_tokens == {t.content: i for i, t in hf_smollm2.added_tokens_decoder.items() if t.special}
    assert smollm2.chat_template == hf_smollm2.chat_template


def test_encode_decode_match_transformers(smollm2: Tokenizer, hf_smollm2, sample: str) -> None:
    ids = smollm2.encode(sample)
    assert ids == hf_smollm2.encode(sample)
    for skip in (False, True):
        assert smollm2.decode(ids, skip_special_tokens=skip) == hf_smollm2.decode(ids, skip_special_tokens=skip)


def test_vocab_lookup(smollm2: Tokenizer, hf_smollm2) -> None:
    for token in ("Hello", "Ġworld", "<|im_end|>", "Ċ"):
        assert smollm2.token_to_id(token) == hf_smollm2.convert_tokens_to_ids(token)
        assert smollm2.id_to_token(smollm2.token_to_id(token)) == token
    assert smollm2.token_to_id("no-such-token-xyz") is None


def test_digits_are_split_one_by_one(smollm2: Tokenizer) -> None:
    # SmolLM's "smollm" pre-tokenizer isolates every digit.
    assert [smollm2.decode([i]) for i in smollm2.encode("x 2024")] == ["x", " ", "2", "0", "2", "4"]


def test_no_bos_added(smollm2: Tokenizer) -> None:
    # tokenizer.ggml.add_bos_token is false in this file.
    assert smollm2.encode("hi") == smollm2.encode("hi", add_special_tokens=False)


def test_bytes_missing_from_the_vocab_are_dropped(smollm2: Tokenizer, hf_smollm2) -> None:
    # SmolLM2's vocab lacks 21 of the 256 byte tokens (a few control characters,
    # and 0xF1/0xF2, lead bytes of planes 4-12); both libraries drop such bytes.
    assert not _encodable(smollm2, "\x04") and not _encodable(smollm2, "\U00040000")
    ids = smollm2.encode("a\x04b")
    assert ids == hf_smollm2.encode("a\x04b")
    assert smollm2.decode(ids) == "ab"


def test_numbers_are_isolated_as_in_smollm2(smollm2: Tokenizer, hf_smollm2, hf_smollm2_digits) -> None:
    for text, pieces in (("1 ¼ cups", ["1", " ", "¼", " cups"]), ("x\n  2", ["x", "\n  ", "2"])):
        assert [smollm2.decode([i]) for i in smollm2.encode(text)] == pieces
        assert smollm2.encode(text) == hf_smollm2_digits.encode(text) != hf_smollm2.encode(text)


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_parity_on_any_text(smollm2: Tokenizer, hf_smollm2, hf_smollm2_digits, text: str) -> None:
    assert smollm2.encode(text) == hf_smollm2_digits.encode(text)
    plain = _without_numbers(text)
    assert smollm2.encode(plain) == hf_smollm2.encode(plain)


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_roundtrip_on_any_encodable_text(smollm2: Tokenizer, text: str) -> None:
    text = "".join(c for c in text if _encodable(smollm2, c))
    assert smollm2.decode(smollm2.encode(text)) == text
