"""Incremental decoding: deltas concatenate to the full decode and never split a character."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llmkit.tokenizer import StreamDecoder, Tokenizer

MULTIBYTE = "naïve 日本語 🤗🚀 👨‍👩‍👧‍👦 한국어 🇫🇷 end"


def _stream(tok: Tokenizer, ids: list[int], skip_special_tokens: bool = False) -> tuple[list[str], str]:
    decoder = tok.stream_decoder(skip_special_tokens=skip_special_tokens)
    return [decoder.step(i) for i in ids], decoder.flush()


def test_multibyte_characters_are_never_split(smollm2: Tokenizer, trained: Tokenizer) -> None:
    for tok in (smollm2, trained):
        ids = tok.encode(MULTIBYTE)
        # Some character really is spread over several tokens, or this test would be vacuous.
        assert any("\ufffd" in tok.decode([i]) for i in ids)
        deltas, tail = _stream(tok, ids)
        assert all("\ufffd" not in d for d in deltas)
        assert "".join(deltas) == MULTIBYTE and tail == ""


def test_skip_special_tokens(smollm2: Tokenizer) -> None:
    ids = smollm2.encode("<|im_start|>assistant\nHé 🤗<|im_end|>")
    for skip in (False, True):
        deltas, tail = _stream(smollm2, ids, skip)
        assert "".join(deltas) + tail == smollm2.decode(ids, skip_special_tokens=skip)


def test_truncated_character_comes_out_on_flush(trained: Tokenizer) -> None:
    ids = trained.encode("ok 🤗")
    ids = ids[:-1]  # the emoji's last byte never arrives
    deltas, tail = _stream(trained, ids)
    assert "".join(deltas) == "ok " and tail == trained.decode(ids)[len("ok "):] and "\ufffd" in tail


def test_works_with_any_decode_function() -> None:
    pieces = {0: b"a", 1: b"\xf0\x9f", 2: b"\xa4\x97", 3: b"!"}  # 🤗 split over ids 1 and 2
    decoder = StreamDecoder(lambda ids: b"".join(pieces[i] for i in ids).decode("utf-8", "replace"))
    assert [decoder.step(i) for i in (0, 1, 2, 3)] == ["a", "", "🤗", "!"]


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_stream_equals_full_decode(trained: Tokenizer, text: str) -> None:
    ids = trained.encode(text)
    deltas, tail = _stream(trained, ids)
    assert "".join(deltas) + tail == trained.decode(ids) == text


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 999), max_size=40))
def test_stream_equals_full_decode_on_random_ids(trained: Tokenizer, ids: list[int]) -> None:
    # Arbitrary ids can form invalid UTF-8; the concatenation still matches.
    deltas, tail = _stream(trained, ids)
    assert "".join(deltas) + tail == trained.decode(ids)
