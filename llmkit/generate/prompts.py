"""Prompts to a left-padded batch of ids: plain strings, or chat conversations through the chat template.

Accepted forms, and what they mean:

- ``"text"``: one prompt, encoded as is (the tokenizer adds BOS if it does);
- ``["text", ...]``: a batch of prompts;
- ``[{"role": ..., "content": ...}, ...]``: one conversation, rendered with the
  tokenizer's chat template ending in the assistant header;
- ``[[{...}, ...], ...]``: a batch of conversations.

Left padding puts every row's last real token in the last column, so the
whole batch decodes in lockstep from one slot index; the mask tells the
model which columns to ignore and positions come from it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch

from llmkit.tokenizer import Tokenizer

Message = Mapping[str, Any]
Prompts = Union[str, Sequence[str], Sequence[Message], Sequence[Sequence[Message]]]


def _is_conversation(x: Any) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, str) and len(x) > 0 and all(
        isinstance(m, Mapping) and "role" in m for m in x)


def encode_prompts(tokenizer: Tokenizer, prompts: Prompts) -> tuple[list[list[int]], bool]:
    """Token ids of each prompt, and whether ``prompts`` was a single prompt (not a batch).

    Raises:
        ValueError: an empty batch, an empty prompt, or an item that is neither text nor a conversation.
    """
    single = isinstance(prompts, str) or _is_conversation(prompts)
    items = [prompts] if single else list(prompts)
    if not items:
        raise ValueError("no prompts given")
    rows = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            ids = tokenizer.encode(item)
        elif _is_conversation(item):
            ids = tokenizer.apply_chat_template(item, add_generation_prompt=True, tokenize=True)
        else:
            raise ValueError(f"prompt {i} is neither a string nor a list of {{'role', 'content'}} messages")
        if not ids:
            raise ValueError(f"prompt {i} encodes to no tokens")
        rows.append(ids)
    return rows, single


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and 0/1 mask of ``rows`` left-padded with ``pad_id`` to the longest row."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask
