"""Incremental detokenization for streaming generation.

A byte-level token can end in the middle of a UTF-8 character (an emoji is
four bytes, often split over several tokens), so decoding each new token on
its own would emit replacement characters. :class:`StreamDecoder` keeps a
short window of recent ids and emits a text delta only once the window
decodes to text that does not end in ``U+FFFD``, i.e. once the pending
character is complete. Decoding a window rather than the whole history keeps
each step O(window), and decoding it *with* the already-emitted tokens before
it (not the new token alone) keeps decoders that look at context (leading
spaces, SentencePiece's ``▁``) correct. This is the prefix/read-offset scheme
of Hugging Face's text-generation-inference and vLLM.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

_REPLACEMENT = "\ufffd"


class StreamDecoder:
    """Turns a stream of token ids into text deltas that never split a character.

    The concatenation of every :meth:`step` result and the final :meth:`flush`
    equals ``decode(all_ids)``.

    Args:
        decode: ids to text, e.g. ``Tokenizer.decode`` with its options bound.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # start of the window: tokens before it are never decoded again
        self._read = 0  # tokens before this are emitted

    def step(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is pending)."""
        self._ids.append(token_id)
        emitted = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        if len(text) <= len(emitted) or text.endswith(_REPLACEMENT):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(emitted):]

    def flush(self) -> str:
        """Return whatever is still pending at the end of the stream (may hold ``U+FFFD``)."""
        emitted = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return text[len(emitted):]
