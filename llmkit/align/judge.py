"""LLM-as-judge: pairwise preference with position swap, and single-answer grading.

The judge reads a fixed, documented prompt (:data:`PAIRWISE_PROMPT`,
:data:`GRADE_PROMPT`, after MT-Bench's) and answers with one token. Two kinds
of judge:

- a local llmkit model ``(model, tokenizer)``: no text is generated; the
  judge's verdict is read from its next-token distribution, restricted to the
  allowed answers (``A``/``B``, or the digits ``1``..``5``), so the result is a
  probability (pairwise) or an expected grade, not a sample;
- an OpenAI-compatible endpoint :class:`Endpoint` (``llmkit serve``, vLLM,
  OpenAI ...): one greedy ``/v1/chat/completions`` call of at most a few
  tokens, parsed for the verdict.

Order bias (judges favour the first -- or second -- answer) is cancelled by
asking twice with the answers swapped and averaging: ``p(a) = (P(A | a, b) +
P(B | b, a)) / 2``. With a text-only endpoint each order gives 0 or 1, so
disagreeing orders give 0.5, a tie. Used as a reward, :func:`grade` plugs into
GRPO (``align(cfg, reward_fn=...)``) and best-of-n.
"""
from __future__ import annotations

import json
import re
import urllib.request
from dataclasses import dataclass
from typing import Any

import torch

PAIRWISE_PROMPT = (
    "Please act as an impartial judge and evaluate the two answers to the user's question below. Choose the answer "
    "that follows the user's instructions and answers the question better: consider helpfulness, relevance, "
    "accuracy and level of detail. Do not let the order or the length of the answers influence you.\n\n"
    "[Question]\n{prompt}\n\n[Answer A]\n{a}\n\n[Answer B]\n{b}\n\n"
    "Reply with a single letter: A if Answer A is better, B if Answer B is better.")
GRADE_PROMPT = (
    "Please act as an impartial judge and rate the answer to the user's question below on a scale of 1 to 5, where 1 "
    "is useless or wrong and 5 is correct, helpful and complete.\n\n[Question]\n{prompt}\n\n[Answer]\n{answer}\n\n"
    "Reply with a single digit from 1 to 5.")
GRADES = "12345"


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible chat endpoint, e.g. ``Endpoint("http://localhost:8000/v1", "smollm2")``."""

    base_url: str
    model: str
    api_key: str = ""
    timeout: float = 60.0

    def complete(self, prompt: str, max_tokens: int = 4) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": max_tokens, "temperature": 0.0}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.base_url.rstrip("/") + "/chat/completions", body, headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())["choices"][0]["message"]["content"]


Judge = Endpoint | tuple[Any, Any]  # an endpoint, or (llmkit model, tokenizer)


@dataclass(frozen=True)
class Verdict:
    """A pairwise judgement with position swap."""

    p_a: float  # probability that ``a`` is better, averaged over both orders
    p_a_first: float  # ... when ``a`` was shown first
    p_a_second: float  # ... when ``a`` was shown second

    @property
    def winner(self) -> str:
        """``"a"``, ``"b"`` or ``"tie"`` (``p_a`` within float rounding of 0.5)."""
        return "tie" if abs(self.p_a - 0.5) < 1e-6 else "a" if self.p_a > 0.5 else "b"


@torch.no_grad()
def _choice_probs(model, tokenizer, prompt: str, choices: str) -> torch.Tensor:
    """The judge's next-token probabilities of each single-character choice, renormalised over them."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        tokenize=True)
    choice_ids = []
    for c in choices:
        encoded = tokenizer.encode(c, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"the judge's tokenizer splits {c!r} into {len(encoded)} tokens; it needs one")
        choice_ids.append(encoded[0])
    was_training = model.training
    model.eval()
    try:
        logits = model(torch.tensor([ids], device=next(model.parameters()).device))[0, -1].float()
    finally:
        model.train(was_training)
    return torch.softmax(logits[choice_ids], dim=-1).cpu()


def _parsed(text: str, choices: str) -> torch.Tensor:
    """One-hot over ``choices`` for the first choice character in ``text`` (uniform when there is none)."""
    found = re.search(f"[{choices}]", text.strip())
    if found is None:
        return torch.full((len(choices),), 1 / len(choices))
    return torch.nn.functional.one_hot(torch.tensor(choices.index(found.group())), len(choices)).float()


def _probs(judge: Judge, prompt: str, choices: str) -> torch.Tensor:
    if isinstance(judge, Endpoint):
        return _parsed(judge.complete(prompt), choices)
    model, tokenizer = judge
    return _choice_probs(model, tokenizer, prompt, choices)


def judge(judge_model: Judge, prompt: str, a: str, b: str) -> Verdict:
    """Which of answers ``a`` and ``b`` to ``prompt`` is better, asked in both orders.

    Args:
        judge_model: an :class:`Endpoint`, or ``(model, tokenizer)`` of an llmkit model.
        prompt: the user's question.
        a: one answer.
        b: the other.
    """
    first = _probs(judge_model, PAIRWISE_PROMPT.format(prompt=prompt, a=a, b=b), "AB")[0].item()
    second = _probs(judge_model, PAIRWISE_PROMPT.format(prompt=prompt, a=b, b=a), "AB")[1].item()
    return Verdict((first + second) / 2, first, second)


def grade(judge_model: Judge, prompt: str, answer: str) -> float:
    """The judge's grade of ``answer`` in [1, 5]: the expected digit (local model) or the digit it replies."""
    probs = _probs(judge_model, GRADE_PROMPT.format(prompt=prompt, answer=answer), GRADES)
    return float((probs * torch.arange(1, 6, dtype=probs.dtype)).sum())
