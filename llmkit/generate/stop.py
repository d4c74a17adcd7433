"""Stop strings over streamed text: find them exactly, and hold back what might start one.

Stop strings are matched on the decoded text, not on token ids, because the
same string can be tokenized many ways and can span token boundaries (``"\\n\\n"``
may arrive as one token or as two). Text grows a delta at a time, so each
search only looks at the region a new match could occupy: from
``len(old_text) - longest_stop + 1`` on. The text is cut right before the
earliest match; the stop string itself is not part of the output (OpenAI
semantics).

While streaming, a suffix of the text that is a prefix of some stop string
(``"\\n"`` when ``"\\n\\n"`` is a stop) must not be sent yet: if the next delta
completes the stop string, that suffix would have been sent in error.
:meth:`StopStrings.holdback` says how long that suffix is; it is released as
soon as the text moves past it or the row ends.
"""
from __future__ import annotations

from collections.abc import Iterable


class StopStrings:
    """A set of stop strings (empty strings are ignored).

    Args:
        stops: the strings that end generation.
    """

    def __init__(self, stops: Iterable[str] = ()):
        self.stops = tuple(dict.fromkeys(s for s in stops if s))
        self.longest = max(map(len, self.stops), default=0)

    def __bool__(self) -> bool:
        return bool(self.stops)

    def find(self, text: str, start: int = 0) -> int:
        """Index of the earliest stop string in ``text`` that ends after ``start``, or -1.

        Args:
            text: the text generated so far.
            start: length of the text at the previous search (no match lies wholly before it).
        """
        begin = max(0, start - self.longest + 1)
        hits = [i for s in self.stops if (i := text.find(s, begin)) >= 0]
        return min(hits, default=-1)

    def holdback(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        for n in range(min(self.longest - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0
