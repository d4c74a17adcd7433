"""Pre-tokenizer regexes, by name, for byte-level BPE.

A byte-level BPE never merges across the chunks its pre-tokenizer regex cuts
the text into, so the regex is part of the tokenizer's definition: the same
vocab and merges with another regex encode differently. GGUF files name
theirs in ``tokenizer.ggml.pre`` (llama.cpp's names); :data:`PRE_TOKENIZERS`
maps the names we support to a builder of the matching ``tokenizers``
pre-tokenizer. Every pre-tokenizer ends with ``ByteLevel``, which maps each
byte to one of 256 printable characters (GPT-2's trick), so any text
pre-tokenizes into symbols of a 256-letter alphabet.
"""
from __future__ import annotations

from collections.abc import Callable

from tokenizers import Regex
from tokenizers import pre_tokenizers as pt

# GPT-4's cl100k_base split (tiktoken): case-insensitive contractions, words
# with at most one leading non-letter, numbers in groups of at most three
# digits, punctuation runs with their trailing newlines, newline runs, and
# whitespace that leaves its last space to the next word.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}|"""
    r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)


def byte_level() -> pt.PreTokenizer:
    """GPT-2: ``ByteLevel`` with its built-in regex (letters, digits, punctuation runs)."""
    return pt.ByteLevel(add_prefix_space=False, use_regex=True)


def digits_then_byte_level() -> pt.PreTokenizer:
    """StarCoder / SmolLM: every digit is its own chunk, then GPT-2's regex."""
    return pt.Sequence([pt.Digits(individual_digits=True), byte_level()])


def cl100k() -> pt.PreTokenizer:
    """GPT-4 (and Llama 3): the cl100k regex, then the byte mapping alone."""
    return pt.Sequence([
        pt.Split(Regex(CL100K_PATTERN), behavior="isolated"),
        pt.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


# Keys are llama.cpp's ``tokenizer.ggml.pre`` names.
PRE_TOKENIZERS: dict[str, Callable[[], pt.PreTokenizer]] = {
    "gpt2": byte_level,
    "smollm": digits_then_byte_level,
    "starcoder": digits_then_byte_level,
    "refact": digits_then_byte_level,
    "llama-bpe": cl100k,
}


def pre_tokenizer(name: str) -> pt.PreTokenizer:
    """Build the pre-tokenizer registered under ``name``.

    Args:
        name: a key of :data:`PRE_TOKENIZERS`, e.g. ``"smollm"``.

    Returns:
        A fresh ``tokenizers`` pre-tokenizer.

    Raises:
        ValueError: ``name`` is not registered; the message lists the known names.
    """
    try:
        return PRE_TOKENIZERS[name]()
    except KeyError:
        raise ValueError(
            f"unsupported pre-tokenizer {name!r}; known: {', '.join(sorted(PRE_TOKENIZERS))}"
        ) from None
