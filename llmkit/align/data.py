"""Alignment data files: preference pairs, unpaired KTO labels, prompts for online methods.

Three JSON-lines layouts, one record per line:

- preferences: ``{"prompt", "chosen", "rejected"}``. The prompt is a string
  (one user message) or a list of ``{"role", "content"}`` messages; each answer
  is a string or a list of messages ending in the assistant's reply. In HF's
  "implicit prompt" layout the prompt is left out and ``chosen``/``rejected``
  are whole conversations sharing everything but the last message.
- KTO: ``{"prompt", "completion", "label"}`` with a boolean label (desirable).
- prompts: ``{"prompt"}`` plus, for verifiable tasks, ``"answer"``.

Readers return plain dicts with the prompt as messages, the answers as
strings, and ``where`` (``file:line``) so later checks (a prompt that fills the
whole context) can point at the line too. Bad data is a :class:`DataError`
naming the file, line and field; nothing is silently skipped.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llmkit.data.loader import IGNORE_INDEX
from llmkit.data.sft import ChatTokenizer, Message, PreferenceDataset

Pair = dict[str, tuple[torch.Tensor, torch.Tensor]]  # {"chosen": (x, y), "rejected": (x, y)}


class DataError(ValueError):
    """A bad alignment record; the message starts with ``file:line: field 'name':``."""


def _fail(where: str, field: str, problem: str) -> DataError:
    return DataError(f"{where}: field {field!r}: {problem}")


def _lines(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record


def _messages(value: Any, where: str, field: str) -> list[Message]:
    """A prompt as messages: a string is one user message."""
    if isinstance(value, str):
        if not value.strip():
            raise _fail(where, field, "is empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise _fail(where, field, "must be a string or a non-empty list of messages")
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise _fail(where, f"{field}[{i}]", 'must be {"role": str, "content": str}')
    return value


def _answer(value: Any, where: str, field: str) -> str:
    """A reply as text: a string, or the last (assistant) message of a list."""
    if isinstance(value, list):
        value = _messages(value, where, field)
        if value[-1]["role"] != "assistant":
            raise _fail(where, field, f"the last message must be the assistant's, not {value[-1]['role']!r}")
        value = value[-1]["content"]
    if not isinstance(value, str):
        raise _fail(where, field, f"must be a string or a list of messages, not {type(value).__name__}")
    if not value.strip():
        raise _fail(where, field, "is an empty completion")
    return value


def _need(record: dict, where: str, *fields: str) -> None:
    for f in fields:
        if f not in record:
            raise _fail(where, f, "is missing")


def read_preferences(path: str | Path) -> list[dict[str, Any]]:
    """Preference pairs ``{"prompt": messages, "chosen": str, "rejected": str, "where": "file:line"}``."""
    out = []
    for where, rec in _lines(path):
        _need(rec, where, "chosen", "rejected")
        if "prompt" in rec:
            prompt = _messages(rec["prompt"], where, "prompt")
        else:  # implicit prompt: the shared conversation before the last message
            c, r = (_messages(rec[k], where, k) for k in ("chosen", "rejected"))
            if len(c) < 2 or c[:-1] != r[:-1]:
                raise _fail(where, "prompt", "is missing (and chosen/rejected do not share a conversation prefix)")
            prompt = c[:-1]
        chosen, rejected = _answer(rec["chosen"], where, "chosen"), _answer(rec["rejected"], where, "rejected")
        if chosen == rejected:
            raise _fail(where, "rejected", "equals chosen: the pair says nothing")
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "where": where})
    return _non_empty(out, path)


def read_kto(path: str | Path) -> list[dict[str, Any]]:
    """Unpaired examples ``{"prompt": messages, "completion": str, "label": bool, "where"}``."""
    out = []
    for where, rec in _lines(path):
        _need(rec, where, "prompt", "completion", "label")
        if not isinstance(rec["label"], bool):
            raise _fail(where, "label", f"must be true or false, not {rec['label']!r}")
        out.append({"prompt": _messages(rec["prompt"], where, "prompt"),
                    "completion": _answer(rec["completion"], where, "completion"), "label": rec["label"],
                    "where": where})
    out = _non_empty(out, path)
    if len({r["label"] for r in out}) < 2:
        raise DataError(f"{path}: every label is {out[0]['label']}: KTO needs desirable and undesirable examples")
    return out


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Prompts ``{"prompt": messages, "answer": str | None, "where"}`` for online methods."""
    out = []
    for where, rec in _lines(path):
        _need(rec, where, "prompt")
        answer = rec.get("answer")
        if answer is not None and not isinstance(answer, (str, int, float)):
            raise _fail(where, "answer", "must be a string or a number")
        out.append({"prompt": _messages(rec["prompt"], where, "prompt"),
                    "answer": None if answer is None else str(answer), "where": where})
    return _non_empty(out, path)


def _non_empty(records: list, path: str | Path) -> list:
    if not records:
        raise DataError(f"{path}: no records")
    return records


def encode_pairs(records: list[dict[str, Any]], tokenizer: ChatTokenizer, max_len: int) -> list[Pair]:
    """Tokenise preference records with the chat template: ``(x, y)`` per answer, targets only on the answer.

    Raises:
        DataError: a prompt so long that an answer has no token left within ``max_len``.
    """
    items = []
    for rec in records:
        encoded = PreferenceDataset([rec], tokenizer, max_len)
        if encoded.skipped:
            raise _fail(rec.get("where", "<data>"), "prompt",
                        f"fills the whole context of {max_len} tokens, leaving no room for the answer")
        items.append(encoded[0])
    return items


def join_completion(prompt: list[int] | torch.Tensor, completion: list[int] | torch.Tensor,
                    max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of ``prompt + completion`` cut to ``max_len`` inputs, targets only on the completion."""
    ids = torch.cat([torch.as_tensor(prompt, dtype=torch.long), torch.as_tensor(completion, dtype=torch.long)])
    ids = ids[:max_len + 1]
    y = ids[1:].clone()
    y[:len(prompt) - 1] = IGNORE_INDEX
    return ids[:-1], y


def encode_prompt(tokenizer: ChatTokenizer, rec: dict[str, Any], max_len: int) -> list[int]:
    """The prompt's ids ending in the assistant header (raises when it leaves no room within ``max_len``)."""
    ids = tokenizer.apply_chat_template(rec["prompt"], add_generation_prompt=True, tokenize=True)
    if len(ids) >= max_len:
        raise _fail(rec.get("where", "<data>"), "prompt", f"is {len(ids)} tokens, no room for an answer within "
                    f"{max_len} (raise --seq_len)")
    return ids


def encode_completions(records: list[dict[str, Any]], tokenizer: ChatTokenizer,
                       max_len: int) -> list[tuple[list[int], list[int]]]:
    """``(prompt_ids, completion_ids)`` per record with a ``completion`` (the reply through its end-of-turn)."""
    out = []
    for rec in records:
        prompt = encode_prompt(tokenizer, rec, max_len)
        full = tokenizer.apply_chat_template(rec["prompt"] + [{"role": "assistant", "content": rec["completion"]}],
                                             add_generation_prompt=False, tokenize=True)
        if full[:len(prompt)] == prompt:
            out.append((prompt, full[len(prompt):]))
            continue
        # the tokens straddle the boundary (a reply starting with spaces merges with the header's newline):
        # the reply's text after the rendered prompt, tokenised alone
        reply = {"role": "assistant", "content": rec["completion"]}
        texts = [tokenizer.apply_chat_template(m, add_generation_prompt=g, tokenize=False)
                 for m, g in ((rec["prompt"], True), (rec["prompt"] + [reply], False))]
        if not texts[1].startswith(texts[0]):
            raise _fail(rec.get("where", "<data>"), "prompt",
                        "the chat template renders it differently before an answer")
        out.append((prompt, tokenizer.encode(texts[1][len(texts[0]):], add_special_tokens=False)))
    return out


def encode_kto(records: list[dict[str, Any]], tokenizer: ChatTokenizer,
               max_len: int) -> list[tuple[list[int], list[int], bool]]:
    """``(prompt_ids, completion_ids, label)`` per KTO record."""
    return [(p, c, rec["label"]) for (p, c), rec in zip(encode_completions(records, tokenizer, max_len), records)]
