"""A tiny chat SFT set generated offline from a corpus, and the named sets built from it.

:func:`make_chat_set` turns documents into single-turn conversations of three
kinds:

* identify -- "Which novel is this passage from?" + a passage -> the title;
* continue -- "Continue this passage:" + a passage -> the lines that follow it;
* author   -- "Who wrote Emma?" -> "Jane Austen wrote Emma." (documents with an author).

in proportions 45/45/10: a corpus has few titles, so more author questions
would only repeat the same handful of conversations.

Passages are whole lines (verse keeps its layout) from a document drawn with
probability proportional to its length. Nothing here needs a model or a
network beyond the corpus download, so the set is reproducible from its seed.

Named sets (:data:`CHAT_SETS`) resolve through :func:`load_chat_set` to JSON
lines (``{"messages": [...]}``) cached under ``cache_dir("data", name)``. The
validation conversations come from **held-out documents** -- the corpus's
:func:`~llmkit.data.split.split_documents` validation works (*Persuasion*;
four plays) -- so neither pre-training nor SFT has seen their text. The price:
an identify question in validation names a work that was never an answer in
training, so it measures answer format, not recall; continue questions measure
generalisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit.data.conversations import read_conversations, write_conversations
from llmkit.data.corpora import SHAKESPEARE_POEMS, load_corpus
from llmkit.data.document import Document
from llmkit.data.sft import Message
from llmkit.data.split import split_documents
from llmkit.fetch import cache_dir

_CACHE_VERSION = 1
_TASKS = {"identify": 0.45, "continue": 0.45, "author": 0.10}


@dataclass(frozen=True)
class ChatSetSpec:
    """How a named chat set is made from a corpus."""

    corpus: str  # a key of CORPORA
    work_noun: str  # the word in "Which <noun> is this passage from?"
    exclude_titles: frozenset[str] = frozenset()  # works the noun does not fit (poems in a play set)
    train_size: int = 2000  # conversations from the training documents
    val_size: int = 200  # conversations from the held-out documents


CHAT_SETS: dict[str, ChatSetSpec] = {
    "austen-chat": ChatSetSpec("austen", "novel"),
    "shakespeare-chat": ChatSetSpec("shakespeare", "play", SHAKESPEARE_POEMS),
}


def _passage(lines: list[str], start: int, min_chars: int) -> tuple[str, int]:
    """Lines from ``start`` until ``min_chars`` non-blank characters; returns (text, next line)."""
    out, size, i = [], 0, start
    while i < len(lines) and size < min_chars:
        out.append(lines[i])
        size += len(lines[i].strip())
        i += 1
    return "\n".join(out).strip("\n"), i


def make_chat_set(docs: list[Document], n: int, seed: int = 0, work_noun: str = "work",
                  passage_chars: int = 400, continuation_chars: int = 200) -> list[list[Message]]:
    """Generate ``n`` single-turn conversations about ``docs``.

    Args:
        docs: source documents (titles are the identify answers).
        n: number of conversations.
        seed: fixes every choice; same inputs and seed, same set.
        work_noun: "novel", "play"... in the identify question.
        passage_chars: minimum non-blank characters of a quoted passage.
        continuation_chars: minimum non-blank characters of a continuation answer.

    Returns:
        Conversations, each ``[user message, assistant message]``.
    """
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise ValueError("make_chat_set needs at least one non-empty document")
    rng = np.random.default_rng(seed)
    lines = [d.text.split("\n") for d in docs]
    weights = np.array([len(d.text) for d in docs], dtype=np.float64)
    weights /= weights.sum()
    tasks = [t for t in _TASKS if t != "author" or any(d.author for d in docs)]
    task_p = np.array([_TASKS[t] for t in tasks]) / sum(_TASKS[t] for t in tasks)
    out: list[list[Message]] = []
    while len(out) < n:
        task = tasks[rng.choice(len(tasks), p=task_p)]
        i = int(rng.choice(len(docs), p=weights))
        doc = docs[i]
        if task == "author":
            if not doc.author:
                continue
            question, answer = f"Who wrote {doc.title}?", f"{doc.author} wrote {doc.title}."
        else:
            text, after = _passage(lines[i], int(rng.integers(len(lines[i]))), passage_chars)
            if task == "identify":
                question, answer = f"Which {work_noun} is this passage from?\n\n{text}", doc.title
            else:
                answer = _passage(lines[i], after, continuation_chars)[0]
                question = f"Continue this passage:\n\n{text}"
            if not text.strip() or not answer.strip():
                continue  # drew the last blank lines of a document
        out.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    return out


def chat_set_path(name: str, split: str = "train") -> Path:
    """The JSON-lines file of a named chat set split, building both splits on first use.

    Args:
        name: a key of :data:`CHAT_SETS`.
        split: ``"train"`` or ``"val"``.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    spec = CHAT_SETS[name]
    folder = cache_dir("data", name)
    path = folder / f"{split}-v{_CACHE_VERSION}.jsonl"
    if not path.exists():
        docs = [d for d in load_corpus(spec.corpus) if d.title not in spec.exclude_titles]
        train_docs, val_docs = split_documents(docs, spec.corpus)
        for part, part_docs, size, seed in (("train", train_docs, spec.train_size, 0),
                                            ("val", val_docs, spec.val_size, 1)):
            write_conversations(folder / f"{part}-v{_CACHE_VERSION}.jsonl",
                                make_chat_set(part_docs, size, seed, spec.work_noun))
    return path



def resolve_chat_data(data: str, val_data: str = "") -> tuple[Path, Path | None]:
    """The (train, val) conversation files: a named chat set's splits, or the given ``.jsonl`` paths.

    Without ``val_data`` a named set brings its own val split and a file has none.

    Raises:
        FileNotFoundError: a path that does not exist (the message names the named sets).
    """
    def path(name: str, split: str) -> Path:
        if name in CHAT_SETS:
            return chat_set_path(name, split)
        p = Path(name).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"no such conversation file {name!r} (give a .jsonl of {{\"messages\": [...]}} "
                                    f"or a named chat set: {', '.join(CHAT_SETS)})")
        return p

    train = path(data, "train")
    if val_data:
        return train, path(val_data, "val")
    return train, (chat_set_path(data, "val") if data in CHAT_SETS else None)

def load_chat_set(name_or_path: str, split: str = "train") -> list[list[Message]]:
    """Conversations of a named chat set split, or of a JSON-lines file of ``{"messages": [...]}``.

    Args:
        name_or_path: a key of :data:`CHAT_SETS` or a ``.jsonl`` path.
        split: for named sets, ``"train"`` or ``"val"``; ignored for paths.
    """
    path = chat_set_path(name_or_path, split) if name_or_path in CHAT_SETS else Path(name_or_path).expanduser()
    return read_conversations(path)
