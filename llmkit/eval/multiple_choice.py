"""Multiple-choice tasks scored by log-likelihood, as lm-eval-harness scores them.

Each question is one JSON line ``{"question": str, "choices": [str, ...],
"answer": int | str}`` (``answer`` the index of the right choice, or its
text). For each choice the model scores the continuation ``" " + choice``
after the question (lm-eval's ``target_delimiter``) and the prediction is the
argmax of:

* ``acc``: the summed log-likelihood;
* ``acc_norm``: the log-likelihood divided by the choice's length in
  characters, lm-eval's ``acc_norm`` (its code divides by ``len(choice)``, a
  string; the docs call this "byte length");
* ``acc_bytes``: divided by its UTF-8 byte length (lm-eval's ``acc_bytes``).

Each accuracy comes with lm-eval's standard error of the mean (sample standard
deviation over sqrt(n)).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmkit.eval.results import mean_stderr
from llmkit.eval.scoring import loglikelihoods

DELIMITER = " "  # lm-eval's target_delimiter between question and choice


@dataclass(frozen=True)
class Question:
    """One multiple-choice item: ``choices[answer]`` is right."""

    question: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class ChoiceResult:
    """Accuracies over ``n`` questions, each with its standard error, and each question's prediction."""

    n: int
    acc: float
    acc_stderr: float
    acc_norm: float
    acc_norm_stderr: float
    acc_bytes: float
    acc_bytes_stderr: float
    predictions: tuple[int, ...]

    def metrics(self) -> dict[str, tuple[float, float]]:
        """``{metric: (value, stderr)}``."""
        return {"acc": (self.acc, self.acc_stderr), "acc_norm": (self.acc_norm, self.acc_norm_stderr),
                "acc_bytes": (self.acc_bytes, self.acc_bytes_stderr)}


def parse_question(record: object, where: str) -> Question:
    """A :class:`Question` from a decoded JSON record; ValueError naming ``where`` and the bad field."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with question, choices, answer")
    for name in ("question", "choices", "answer"):
        if name not in record:
            raise ValueError(f"{where}: missing field {name!r}")
    question, choices, answer = record["question"], record["choices"], record["answer"]
    if not isinstance(question, str):
        raise ValueError(f"{where}: field 'question' must be a string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise ValueError(f"{where}: field 'choices' must be a list of at least 2 non-empty strings")
    if isinstance(answer, str):
        if answer not in choices:
            raise ValueError(f"{where}: field 'answer' {answer!r} is not one of the choices")
        answer = choices.index(answer)
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ValueError(f"{where}: field 'answer' must be a choice or its index in [0, {len(choices)})")
    return Question(question, tuple(choices), answer)


def read_questions(path: str | Path) -> list[Question]:
    """Questions from a JSON-lines file (blank lines skipped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an empty file, a line that is not JSON, or a missing or malformed field (``file:line``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such task file {path}")
    questions = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            questions.append(parse_question(record, f"{path}:{lineno}"))
    if not questions:
        raise ValueError(f"{path} is empty: expected one JSON object per line with question, choices, answer")
    return questions


def _argmax(xs: Sequence[float]) -> int:
    return max(range(len(xs)), key=xs.__getitem__)  # first of ties, as numpy's argmax


def evaluate_choices(model, tokenizer, questions: Sequence[Question], batch_size: int = 8) -> ChoiceResult:
    """Score every choice of every question; accuracies as lm-eval-harness computes them.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        questions: the items.
        batch_size: continuations per forward pass.
    """
    if not questions:
        raise ValueError("no questions to evaluate")
    pairs = [(q.question, DELIMITER + c) for q in questions for c in q.choices]
    scores = iter(loglikelihoods(model, tokenizer, pairs, batch_size))
    hits: dict[str, list[float]] = {"acc": [], "acc_norm": [], "acc_bytes": []}
    predictions = []
    for q in questions:
        lls = [next(scores).logprob for _ in q.choices]
        pred = _argmax(lls)
        predictions.append(pred)
        hits["acc"].append(float(pred == q.answer))
        hits["acc_norm"].append(float(_argmax([ll / len(c) for ll, c in zip(lls, q.choices)]) == q.answer))
        hits["acc_bytes"].append(float(_argmax([ll / len(c.encode()) for ll, c in zip(lls, q.choices)]) == q.answer))
    mean = {k: sum(v) / len(v) for k, v in hits.items()}
    return ChoiceResult(n=len(questions), acc=mean["acc"], acc_stderr=mean_stderr(hits["acc"]),
                        acc_norm=mean["acc_norm"], acc_norm_stderr=mean_stderr(hits["acc_norm"]),
                        acc_bytes=mean["acc_bytes"], acc_bytes_stderr=mean_stderr(hits["acc_bytes"]),
                        predictions=tuple(predictions))
