"""Fixtures for the data tests: an isolated cache and a tiny chat tokenizer."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``$LLMKIT_CACHE`` at a fresh folder so tests never see or touch the user's cache."""
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


class ByteChatTokenizer:
    """A stand-in for ``llmkit.tokenizer.Tokenizer``: bytes, plus ids 256.. for role markers.

    A message renders as ``<role id> content bytes <END>``; the assistant mask
    covers an assistant message's content and its ``<END>``, as a real chat
    template's generation mask does.
    """

    ROLES = {"system": 256, "user": 257, "assistant": 258}
    END = 259

    def apply_chat_template(self, messages, tokenize=True, assistant_mask=True):
        ids, mask = [], []
        for m in messages:
            body = list(m["content"].encode()) + [self.END]
            ids += [self.ROLES[m["role"]]] + body
            mask += [0] + [int(m["role"] == "assistant")] * len(body)
        return ids, mask


@pytest.fixture
def chat_tokenizer() -> ByteChatTokenizer:
    return ByteChatTokenizer()
