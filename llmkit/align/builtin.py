"""Built-in alignment sets that need no download beyond our corpora: preferences and verifiable arithmetic.

**Preferences** (``austen-prefs``, ``shakespeare-prefs``) come from the named
chat sets of :mod:`llmkit.data.chat` (identify / continue / author questions
over a corpus, validation from held-out works). The chosen answer is the
conversation's own reply; the rejected one is the reply of another
conversation of the same kind (a wrong title, the continuation of a different
passage), so the preference is about content, not style or length.

**Arithmetic** (``arithmetic``) is a verifiable task for GRPO and best-of-n:
"What is 47 + 38?" (operands 1..49, sums only) after one worked example in
the exact answer format (a previous user/assistant turn: ``12 + 7 = 19`` then
``Answer: 19``). The task is sized for a 135M-parameter instruct model:
SmolLM2-135M-Instruct answers about a third correctly greedily and about one
in eight at temperature 1, so a group of 8 samples usually holds both right
and wrong answers and GRPO's advantages are not all zero (the harder
two-digit sums and differences without an example scored 0 on every rollout).
:func:`arithmetic_reward` pays 1 for a correct final number read leniently
(the last ``Answer: N``, else ``\\boxed{N}``, else ``= N``, else the last number)
plus ``FORMAT_REWARD`` for the strict ``Answer: N`` form, so correctness is
rewarded however the model writes it while the format is still taught.
The pairs of operands are split once by a seeded shuffle (a fifth held
out), so no validation problem is ever trained on, whatever the set sizes.
"""
from __future__ import annotations

import random
import re
from typing import Any

from llmkit.data.chat import load_chat_set

PREFERENCE_SETS = {"austen-prefs": "austen-chat", "shakespeare-prefs": "shakespeare-chat"}
FORMAT_REWARD = 0.1
VAL_SHARE = 0.2  # of the arithmetic problems, held out
ANSWER = re.compile(r"Answer:\s*(-?\d+)")
BOXED = re.compile(r"\\boxed\{\s*(-?\d+)\s*\}")
EQUALS = re.compile(r"=\s*(-?\d+)")
NUMBER = re.compile(r"-?\d+")
_QUESTION = "What is {a} + {b}? End your reply with 'Answer: <number>'."
EXAMPLE = [{"role": "user", "content": _QUESTION.format(a=12, b=7)},
           {"role": "assistant", "content": "12 + 7 = 19\nAnswer: 19"}]  # the worked example before every problem
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


def arithmetic_set(n: int, split: str = "train", max_operand: int = 49, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` sums ``{"prompt", "answer", "where"}`` of operands in 1..``max_operand``, after :data:`EXAMPLE`.

    Every pair is in one split only: the pairs are shuffled by ``seed`` and the last ``VAL_SHARE`` of them
    are the validation pool, whatever ``n`` is; ``n`` beyond a pool repeats its problems.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split={split!r}: must be train or val")
    pairs = [(a, b) for a in range(1, max_operand + 1) for b in range(1, max_operand + 1)]
    random.Random(seed).shuffle(pairs)
    cut = len(pairs) - max(1, int(len(pairs) * VAL_SHARE))
    pool = pairs[:cut] if split == "train" else pairs[cut:]
    problems = [pool[i % len(pool)] for i in range(n)]
    return [{"prompt": [*EXAMPLE, {"role": "user", "content": _QUESTION.format(a=a, b=b)}],
             "answer": str(a + b), "where": f"arithmetic/{split}:{i + 1}"} for i, (a, b) in enumerate(problems)]


def parse_answer(completion: str) -> str | None:
    """The final number of a reply, read leniently: last ``Answer: N``, else ``\\boxed{N}``, ``= N``, any number."""
    for pattern in (ANSWER, BOXED, EQUALS, NUMBER):
        found = pattern.findall(completion)
        if found:
            return found[-1]
    return None


def arithmetic_reward(completion: str, answer: str) -> float:
    """1 for the right final number (:func:`parse_answer`) + FORMAT_REWARD for the strict ``Answer: N`` form."""
    fmt = FORMAT_REWARD if ANSWER.search(completion) else 0.0
    return fmt + (1.0 if parse_answer(completion) == answer else 0.0)
