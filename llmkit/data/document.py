"""`Document`: the one record every part of :mod:`llmkit.data` passes around.

A document is the unit of splitting, deduplication and EOS separation: a play,
a novel's chapter, a speech, a fortune. ``title`` names the *work* (so all
chapters of *Emma* share it) and ``section`` the part within it; keeping the
two apart lets the split hold out whole works while shards still separate
chapters. Documents round-trip through JSON lines, which is also the corpus
cache format.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Document:
    """One piece of text with just enough provenance to split and label it.

    Attributes:
        title: the work it belongs to, e.g. ``"Emma"`` or ``"Hamlet, Prince of Denmark"``.
        text: the text itself (already cleaned by the fetcher).
        source: corpus name or file it came from, e.g. ``"austen"``.
        author: who wrote it, when known.
        section: the part of the work, e.g. ``"CHAPTER I"``; empty for whole works.
    """

    title: str
    text: str
    source: str = ""
    author: str = ""
    section: str = ""


def save_documents(docs: list[Document], path: Path) -> None:
    """Write documents as JSON lines (written to a temp file, then renamed)."""
    tmp = Path(path).with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(dataclasses.asdict(doc), ensure_ascii=False) + "\n")
    tmp.replace(path)


def load_documents(path: Path) -> list[Document]:
    """Read documents written by :func:`save_documents`."""
    with Path(path).open(encoding="utf-8") as f:
        return [Document(**json.loads(line)) for line in f if line.strip()]
