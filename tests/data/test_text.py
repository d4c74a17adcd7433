"""Text normalisation, Gutenberg stripping and title casing."""
from __future__ import annotations

import unicodedata

from llmkit.data.text import decode, normalize, strip_gutenberg, title_case


def test_normalize_nfc_line_endings_and_trailing_space():
    decomposed = "Cafe\u0301  \r\nline two\rthree\n\n\n"
    out = normalize("\n\n" + decomposed)
    assert out == "Caf\u00e9\nline two\nthree"
    assert unicodedata.is_normalized("NFC", out)
    assert normalize("  indented verse\n\tkept") == "  indented verse\n\tkept"


def test_decode_falls_back_to_latin1():
    assert decode("é".encode()) == "é"
    assert decode("é".encode("latin-1")) == "é"


def test_strip_gutenberg_header_and_footer():
    text = ("The Project Gutenberg EBook of X\nlicence blah\n"
            "*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n\nBody line.\n\n"
            "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nmore licence\n")
    assert strip_gutenberg(text) == "Body line."
    assert strip_gutenberg("No markers here.") == "No markers here."


def test_title_case():
    assert title_case("THE TRAGEDY OF KING RICHARD III") == "The Tragedy of King Richard III"
    assert title_case("TWELFTH NIGHT; OR, WHAT YOU WILL") == "Twelfth Night; or, What You Will"
    assert title_case("KING HENRY IV, THE FIRST PART") == "King Henry IV, the First Part"
    assert title_case("LOVE'S LABOUR'S LOST") == "Love's Labour's Lost"
    assert title_case("CIVIL WAR") == "Civil War"
