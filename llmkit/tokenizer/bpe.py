"""A pure-Python byte-level BPE, for reading and for cross-checking the fast path.

Byte-pair encoding (Sennrich et al. 2016; byte-level as in GPT-2, Radford et
al. 2019) starts from the 256 byte values as tokens and repeatedly merges the
most frequent adjacent pair into a new token. Text is first split with the
GPT-4 (cl100k) regex and merges never cross a chunk boundary, so words,
numbers, punctuation and whitespace are learned separately. Encoding replays
the merges in the order they were learned: in each chunk, merge the adjacent
pair with the lowest merge rank until none is mergeable. Decoding joins the
bytes and decodes UTF-8 (``U+FFFD`` for incomplete characters).

Training counts pairs over *unique* chunks weighted by their frequency, the
same trick the Rust trainer uses, so it is fast enough for tests on a few
hundred KB. Ties between equally frequent pairs go to the pair seen first,
which is not the Rust trainer's rule, so the two learn different merge lists
on real text; the tests cross-check by loading *these* merges into
``tokenizers`` and comparing encodings. The split uses the third-party
``regex`` module (Python's ``re`` lacks ``\\p{L}``); it is imported only here.

Token ids: ``0..255`` are the bytes, ``256 + i`` is the token made by merge ``i``.
"""
from __future__ import annotations

from collections import Counter

import regex

from llmkit.tokenizer.pretokenizers import CL100K_PATTERN

Pair = tuple[int, int]


def _split(text: str) -> list[bytes]:
    return [chunk.encode("utf-8") for chunk in regex.findall(CL100K_PATTERN, text)]


def _merge(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` in ``ids``, left to right."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class ByteBPE:
    """Byte-level BPE with the GPT-4 split; no special tokens.

    Args:
        merges: learned merges, in order; merge ``i`` creates token ``256 + i``.
    """

    def __init__(self, merges: list[Pair]) -> None:
        self.merges = merges
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.vocab = [bytes([b]) for b in range(256)]  # id -> bytes
        for a, b in merges:
            self.vocab.append(self.vocab[a] + self.vocab[b])

    @classmethod
    def train(cls, text: str, vocab_size: int, min_frequency: int = 2) -> ByteBPE:
        """Learn ``vocab_size - 256`` merges (fewer if pairs run out) from ``text``.

        Args:
            text: training corpus.
            vocab_size: final vocabulary size, the 256 bytes included.
            min_frequency: stop when the best pair occurs fewer times than this.
        """
        words = {tuple(c): n for c, n in Counter(_split(text)).items()}  # chunk ids -> count
        merges: list[Pair] = []
        while 256 + len(merges) < vocab_size:
            pairs: Counter[Pair] = Counter()
            for word, n in words.items():
                for pair in zip(word, word[1:]):
                    pairs[pair] += n
            if not pairs:
                break
            pair, count = max(pairs.items(), key=lambda kv: kv[1])  # first seen wins ties
            if count < min_frequency:
                break
            new_id = 256 + len(merges)
            merges.append(pair)
            words = {tuple(_merge(list(w), pair, new_id)): n for w, n in words.items()}
        return cls(merges)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        out: list[int] = []
        for chunk in _split(text):
            ids = list(chunk)
            while len(ids) > 1:
                pair = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, len(self.ranks)))
                if pair not in self.ranks:
                    break
                ids = _merge(ids, pair, 256 + self.ranks[pair])
            out.extend(ids)
        return out

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; invalid or incomplete UTF-8 becomes ``U+FFFD``."""
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")
