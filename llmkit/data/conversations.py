"""Conversation files: JSON lines, one chat conversation per line.

A conversation is a list of ``{"role", "content"}`` messages. Each line holds
``{"messages": [...]}`` (the layout of HF chat datasets, and what
:func:`write_conversations` writes) or, when read, a bare list of messages.
This is the one reader and writer of the format: SFT data (``llmkit train
--task sft``), the named chat sets, the speedrun and ``llmkit finetune`` all
go through it.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

Conversation = list[dict[str, str]]


def read_conversations(path: str | Path) -> list[Conversation]:
    """Conversations from a ``.jsonl`` file: ``{"messages": [...]}`` or a bare message list per line.

    Raises:
        ValueError: a line that is neither; the message names the file and line.
    """
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                record = json.loads(line)
                messages = record.get("messages") if isinstance(record, dict) else record
                if not isinstance(messages, list):
                    raise ValueError(f"{path}:{lineno}: expected {{\"messages\": [...]}} or a list of messages")
                out.append(messages)
    return out


def write_conversations(path: str | Path, conversations: Iterable[Conversation]) -> Path:
    """Write ``{"messages": [...]}`` lines to ``path`` atomically (a temp file renamed into place); returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in conversations),
                   encoding="utf-8")
    tmp.replace(path)
    return path
