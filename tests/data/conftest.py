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
    template's generation mask does. Like the real one, it appends an open
    assistant header unless ``add_generation_prompt=False``.
    """

    ROLES = {"system": 256, "user": 257, "assistant": 258}
    END = 259

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False, assistant_mask=False):
        assert tokenize and assistant_mask, "the datasets always ask for ids and the mask"
        ids, mask = [], []
        for m in messages:
            body = list(m["content"].encode()) + [self.END]
            ids += [self.ROLES[m["role"]]] + body
            mask += [0] + [int(m["role"] == "assistant")] * len(body)
        if add_generation_prompt:
            ids, mask = ids + [self.ROLES["assistant"]], mask + [0]
        return ids, mask


@pytest.fixture
def chat_tokenizer() -> ByteChatTokenizer:
    return ByteChatTokenizer()
