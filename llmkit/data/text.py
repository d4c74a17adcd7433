"""Text normalisation shared by every corpus reader.

Everything that enters llmkit passes through :func:`normalize`: Unicode NFC (so
"é" is one code point whichever way the source spelled it, and a tokenizer
sees one spelling), ``\\n`` line endings, no trailing spaces, no leading or
trailing blank lines. It deliberately keeps line breaks and inner spacing:
verse, plays and fortunes carry meaning in their layout.
"""
from __future__ import annotations

import re
import unicodedata

_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_SMALL_WORDS = {"a", "an", "and", "as", "at", "by", "for", "in", "of", "on", "or", "the", "to"}
_ROMAN = re.compile(r"^X{0,3}(IX|IV|V?I{0,3})[.,;:]?$")  # I .. XXXIX: kings and parts


def decode(raw: bytes) -> str:
    """Bytes to text: UTF-8 when valid, else Latin-1 (old Gutenberg and fortune files)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def normalize(text: str) -> str:
    """NFC, ``\\n`` line endings, no trailing whitespace on lines or blank lines at the ends."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg licence header/footer when the ``*** START/END OF`` markers exist."""
    start, end = _GUTENBERG_START.search(text), _GUTENBERG_END.search(text)
    if start:
        text = text[start.end():]
        end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return text.strip("\n")


def title_case(heading: str) -> str:
    """``"THE TRAGEDY OF KING RICHARD III"`` -> ``"The Tragedy of King Richard III"``.

    Small words stay lower case except first; Roman numerals stay upper case.
    """
    words = heading.split()
    out = []
    for i, word in enumerate(words):
        if _ROMAN.match(word):
            out.append(word)
        elif i > 0 and word.lower().rstrip(",;:") in _SMALL_WORDS:
            out.append(word.lower())
        else:
            out.append(word[:1].upper() + word[1:].lower())
    return " ".join(out)
