"""Built-in alignment sets that need no download beyond our corpora: preferences and verifiable arithmetic.

**Preferences** (``austen-prefs``, ``shakespeare-prefs``) come from the named
chat sets of :mod:`llmkit.data.chat` (identify / continue / author questions
over a corpus, validation from held-out works). The chosen answer is the
conversation's own reply; the rejected one is the reply of another
conversation of the same kind (a wrong title, the continuation of a different
passage), so the preference is about content, not style or length.

**Arithmetic** (``arithmetic``) is a verifiable task for GRPO and best-of-n:
"What is 47 + 38?" with the instruction to end with ``Answer: <number>``.
:func:`arithmetic_reward` gives 1 for the right number in that form plus
``FORMAT_REWARD`` for the form alone, so a model first learns the format, then
the sums. Problems are drawn from a seeded generator; the validation split
uses another seed, and a problem in both splits is dropped from validation.
"""
from __future__ import annotations

import random
import re
from typing import Any

from llmkit.data.chat import load_chat_set

PREFERENCE_SETS = {"austen-prefs": "austen-chat", "shakespeare-prefs": "shakespeare-chat"}
FORMAT_REWARD = 0.1
ANSWER = re.compile(r"Answer:\s*(-?\d+)")
_KIND = re.compile(r"^\W*(\w+(?:\s+\w+){0,2})")  # the first words of a question: its kind


def preference_set(name: str, split: str = "train", seed: int = 0) -> list[dict[str, Any]]:
    """The built-in preference pairs ``{"prompt", "chosen", "rejected", "where"}`` of ``name``'s split."""
    if name not in PREFERENCE_SETS:
        raise ValueError(f"unknown preference set {name!r}; choose from {', '.join(PREFERENCE_SETS)}")
    conversations = load_chat_set(PREFERENCE_SETS[name], split)
    by_kind: dict[str, list[int]] = {}
    for i, conv in enumerate(conversations):
        by_kind.setdefault(_KIND.match(conv[-2]["content"]).group(1), []).append(i)
    rng = random.Random(seed)
    out = []
    for i, conv in enumerate(conversations):
        peers = by_kind[_KIND.match(conv[-2]["content"]).group(1)]
        others = [j for j in peers if conversations[j][-1]["content"] != conv[-1]["content"]]
        if not others:
            continue
        out.append({"prompt": conv[:-1], "chosen": conv[-1]["content"],
                    "rejected": conversations[rng.choice(others)][-1]["content"], "where": f"{name}/{split}:{i + 1}"})
    return out


def arithmetic_set(n: int, split: str = "train", digits: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` addition/subtraction problems ``{"prompt", "answer", "where"}`` of ``digits``-digit numbers."""
    def draw(rng: random.Random) -> tuple[int, str, int]:
        a, b = rng.randrange(10 ** (digits - 1), 10 ** digits), rng.randrange(10 ** (digits - 1), 10 ** digits)
        op = rng.choice("+-")
        return a, op, b

    train_rng = random.Random(seed)
    train = [draw(train_rng) for _ in range(n)]
    if split == "train":
        problems = train
    elif split == "val":
        seen, rng, problems = set(train), random.Random(seed + 1), []
        while len(problems) < n:
            p = draw(rng)
            if p not in seen:
                problems.append(p)
    else:
        raise ValueError(f"split={split!r}: must be train or val")
    return [{"prompt": [{"role": "user", "content": f"What is {a} {op} {b}? End your reply with 'Answer: <number>'."}],
             "answer": str(a + b if op == "+" else a - b), "where": f"arithmetic/{split}:{i + 1}"}
            for i, (a, op, b) in enumerate(problems)]


def arithmetic_reward(completion: str, answer: str) -> float:
    """1 + FORMAT_REWARD for ``Answer: <answer>`` as the last answer line, FORMAT_REWARD for the form alone."""
    found = ANSWER.findall(completion)
    if not found:
        return 0.0
    return FORMAT_REWARD + (1.0 if found[-1] == answer else 0.0)

