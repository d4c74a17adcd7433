"""Supervised fine-tuning and preference datasets over chat conversations.

A conversation is a list of ``{"role", "content"}`` messages. The tokenizer
renders it with its chat template and says which tokens the assistant wrote
(``apply_chat_template(messages, add_generation_prompt=False, tokenize=True,
assistant_mask=True) -> (ids, mask)``, no trailing assistant header since the
reply is already there); only those are trained on, so the model learns to
answer, not to imitate users or the template.

Items use the same ``(x, y)`` convention as
:class:`~llmkit.data.loader.PackedLoader`: ``y`` is already shifted (``y[t]``
is the target after ``x[:t+1]``) and holds ``-100`` wherever the target is not
an assistant token, so one cross-entropy with ``ignore_index=-100`` serves
pre-training, SFT and preference training alike. Batches are right-padded:
with causal attention, padding after a sequence cannot change its logits, so
no attention mask is needed; padded targets are ``-100``.

Sequences longer than ``max_len`` are cut at the end; a conversation left
with no assistant target is dropped at construction (counted in
``skipped``) rather than yielding an all-ignored row whose loss is undefined.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch.utils.data import Dataset

from llmkit.data.loader import IGNORE_INDEX

Message = dict[str, str]


class ChatTokenizer(Protocol):
    """What the datasets need from :class:`llmkit.tokenizer.Tokenizer`."""

    def apply_chat_template(self, messages: list[Message], add_generation_prompt: bool = True,
                            tokenize: bool = False, assistant_mask: bool = False) -> tuple[list[int], list[int]]:
        """With ``tokenize`` and ``assistant_mask``: ids and a 0/1 mask of assistant-written tokens."""
        ...


def _render(tokenizer: ChatTokenizer, messages: list[Message]) -> tuple[list[int], list[int]]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=True, assistant_mask=True)


def shift_and_mask(ids: list[int], mask: list[int], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of at most ``max_len`` tokens: ``y[t] = ids[t+1]`` where the mask is set, else -100."""
    ids_t = torch.tensor(ids[:max_len + 1], dtype=torch.long)
    keep = torch.tensor(mask[:max_len + 1], dtype=torch.bool)
    y = torch.where(keep[1:], ids_t[1:], IGNORE_INDEX)
    return ids_t[:-1], y


def _last_turn(mask: list[int]) -> list[int]:
    """Keep only the last contiguous run of ones: the final assistant reply."""
    out = [0] * len(mask)
    i = len(mask) - 1
    while i >= 0 and not mask[i]:
        i -= 1
    while i >= 0 and mask[i]:
        out[i] = 1
        i -= 1
    return out


class SFTDataset(Dataset):
    """Conversations -> ``(x, y)`` with targets only on assistant tokens.

    Args:
        conversations: each a list of messages.
        tokenizer: anything with ``apply_chat_template`` (see :class:`ChatTokenizer`).
        max_len: maximum sequence length ``T`` of ``x`` and ``y``.
    """

    def __init__(self, conversations: list[list[Message]], tokenizer: ChatTokenizer, max_len: int):
        self.items: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.skipped = 0
        for messages in conversations:
            x, y = shift_and_mask(*_render(tokenizer, messages), max_len)
            if (y != IGNORE_INDEX).any():
                self.items.append((x, y))
            else:
                self.skipped += 1

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.items[i]


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``(x, y)`` pairs to ``(B, T_max)``: ``x`` with ``pad_id``, ``y`` with -100.

    ``pad_id`` only has to be a valid embedding index: padded positions are never targets.
    """
    width = max(len(x) for x, _ in batch)
    xs = torch.full((len(batch), width), pad_id, dtype=torch.long)
    ys = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, (x, y) in enumerate(batch):
        xs[row, :len(x)], ys[row, :len(y)] = x, y
    return xs, ys


class PreferenceDataset(Dataset):
    """(prompt, chosen, rejected) -> ``(x, y)`` for each response, targets only on the response.

    Each example is ``{"prompt": str | list[Message], "chosen": str, "rejected": str}``;
    a string prompt becomes one user message. Earlier assistant turns inside a
    prompt are masked too: only the final reply is compared. Examples whose
    chosen or rejected reply is truncated away are dropped (``skipped``).

    Args:
        examples: preference records.
        tokenizer: anything with ``apply_chat_template``.
        max_len: maximum sequence length.
    """

    def __init__(self, examples: list[dict], tokenizer: ChatTokenizer, max_len: int):
        self.items: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []
        self.skipped = 0
        for ex in examples:
            prompt = [{"role": "user", "content": ex["prompt"]}] if isinstance(ex["prompt"], str) else ex["prompt"]
            item = {}
            for key in ("chosen", "rejected"):
                messages = prompt + [{"role": "assistant", "content": ex[key]}]
                ids, mask = _render(tokenizer, messages)
                item[key] = shift_and_mask(ids, _last_turn(mask), max_len)
            if all((y != IGNORE_INDEX).any() for _, y in item.values()):
                self.items.append(item)
            else:
                self.skipped += 1

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return self.items[i]


def collate_preference(batch: list[dict[str, tuple[torch.Tensor, torch.Tensor]]],
                       pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack chosen then rejected into ``(2B, T_max)`` so one forward pass scores both.

    Rows ``[:B]`` are the chosen responses and ``[B:]`` the rejected ones, in
    the same example order (``x.chunk(2)`` splits them back).
    """
    return collate([item["chosen"] for item in batch] + [item["rejected"] for item in batch], pad_id)
