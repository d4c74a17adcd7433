"""The fixed train/validation split, by whole document.

Validation text must never leak into training, and the split must not move
when documents are added, reordered or deduplicated, so it is a pure function
of each document, never of its position or a random draw:

* **shakespeare**: four whole plays, one of each kind -- *Macbeth* (tragedy),
  *Twelfth Night* (comedy), *Richard II* (history), *The Tempest* (romance):
  447k of 5.05M characters, 8.8%.
* **austen**: the whole of *Persuasion* (24 of 269 chapters, 466k of 4.02M
  characters, 11.6%) -- her last novel, so the model is judged on a book it
  has not read rather than on unseen chapters of one it has.
* **anything else** (moby-dick, sotu, fortunes, user data): a document is
  validation when the SHA-1 of its title, section and text, read as a
  fraction in [0, 1), is below ``val_fraction`` (5%). At least one document
  (the lowest hash) is held out so tiny corpora still get a validation set.
* **a single document** (one ``.txt`` file): its last ``val_fraction`` of
  characters, cut at a line break, as nanoGPT does with ``input.txt``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import struct

from llmkit.data.document import Document

HELD_OUT: dict[str, frozenset[str]] = {
    "shakespeare": frozenset({
        "Macbeth", "Twelfth Night; or, What You Will",
        "The Tragedy of King Richard the Second", "The Tempest",
    }),
    "austen": frozenset({"Persuasion"}),
}


def split_documents(docs: list[Document], corpus_name: str = "",
                    val_fraction: float = 0.05) -> tuple[list[Document], list[Document]]:
    """Split a corpus into (train, validation) documents, deterministically.

    Args:
        docs: the corpus.
        corpus_name: a key of :data:`HELD_OUT` selects its named held-out works;
            any other name (or ``""``) uses the hash rule.
        val_fraction: target validation share for the hash and single-document rules.

    Returns:
        ``(train, val)``, each in the input order.
    """
    if corpus_name in HELD_OUT:
        held = HELD_OUT[corpus_name]
        missing = held - {d.title for d in docs}
        if missing:
            raise ValueError(f"{corpus_name} corpus lacks its held-out works {sorted(missing)}")
        return [d for d in docs if d.title not in held], [d for d in docs if d.title in held]
    if len(docs) == 1:
        return _split_tail(docs[0], val_fraction)
    keys = [_unit_hash(d) for d in docs]
    lowest = min(range(len(docs)), key=keys.__getitem__, default=None)
    is_val = [k < val_fraction or i == lowest for i, k in enumerate(keys)]
    return [d for d, v in zip(docs, is_val) if not v], [d for d, v in zip(docs, is_val) if v]


def _unit_hash(doc: Document) -> float:
    digest = hashlib.sha1("\x00".join((doc.title, doc.section, doc.text)).encode()).digest()
    return struct.unpack(">Q", digest[:8])[0] / 2**64


def _split_tail(doc: Document, val_fraction: float) -> tuple[list[Document], list[Document]]:
    cut = int(len(doc.text) * (1 - val_fraction))
    newline = doc.text.rfind("\n", 0, cut)
    cut = newline + 1 if newline > 0 else cut
    tail = dataclasses.replace(doc, text=doc.text[cut:], section=(doc.section + " tail").strip())
    return [dataclasses.replace(doc, text=doc.text[:cut])], [tail]
