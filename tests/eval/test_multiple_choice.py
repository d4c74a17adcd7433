"""Multiple choice: log-likelihoods equal a plain forward pass, lm-eval's acc/acc_norm/acc_bytes rules,
the built-in corpus tasks, and clear errors for bad task files."""
from __future__ import annotations

import json

import pytest
import torch

from llmkit.data import Document
from llmkit.eval import multiple_choice
from llmkit.eval.corpus_tasks import builtin_questions, cloze_questions, source_questions
from llmkit.eval.multiple_choice import Question, evaluate_choices, read_questions
from llmkit.eval.results import mean_stderr
from llmkit.eval.scoring import SpanScore, encode_pair, loglikelihoods

QUESTIONS = [
    {"question": "It is a truth universally", "choices": ["acknowledged", "denied", "a"], "answer": 0},
    {"question": "a single man in possession of a good", "choices": ["fortune", "wife"], "answer": "fortune"},
    {"question": "must be in want of a", "choices": ["wife", "neighbourhood", "man"], "answer": 0},
]


def test_loglikelihood_is_a_plain_forward(tiny):
    model, tok = tiny
    pairs = [("It is a truth ", "universally acknowledged"), ("", "hello"), ("in want of a", " wife")]
    for (context, continuation), score in zip(pairs, loglikelihoods(model, tok, pairs, batch_size=2)):
        left, right = encode_pair(tok, context, continuation)
        ids = torch.tensor([left + right])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids)[0, :-1].float(), -1)
        expected = logprobs[len(left) - 1:].gather(-1, ids[0, len(left):, None]).sum()
        assert score.logprob == pytest.approx(float(expected), abs=1e-4)
        assert score.n_tokens == len(right)
        assert score.greedy == bool((logprobs[len(left) - 1:].argmax(-1) == ids[0, len(left):]).all())


def test_encode_pair_follows_lm_eval(tokenizer):
    left, right = encode_pair(tokenizer, "a truth  ", "universally")  # trailing spaces join the continuation
    assert left == tokenizer.encode("a truth", add_special_tokens=False)
    assert left + right == tokenizer.encode("a truth  universally", add_special_tokens=False)
    assert encode_pair(tokenizer, "", "wife")[0] == [tokenizer.eos_id]  # no BOS: EOS stands in


def test_acc_norm_and_bytes_rules(monkeypatch):
    """acc takes the raw log-likelihood, acc_norm divides by characters, acc_bytes by UTF-8 bytes."""
    lls = {" a": -2.0, " bbbb": -3.0, " é": -3.0, " xy": -3.5}
    monkeypatch.setattr(multiple_choice, "loglikelihoods",
                        lambda m, t, pairs, bs: [SpanScore(lls[c], 1, False) for _, c in pairs])
    qs = [Question("q", ("a", "bbbb"), 1), Question("q", ("é", "xy"), 0)]
    r = evaluate_choices(None, None, qs)
    # q1: raw a (-2 > -3) wrong; per char bbbb (-0.75 > -2) right; per byte the same
    # q2: raw é (-3 > -3.5) right; per char xy (-1.75 > -3) wrong; per byte é (-1.5 > -1.75) right
    assert r.predictions == (0, 0)
    assert (r.acc, r.acc_norm, r.acc_bytes) == (0.5, 0.5, 1.0)
    assert r.acc_stderr == mean_stderr([0.0, 1.0]) == 0.5 and r.acc_bytes_stderr == 0.0


def test_stderr_is_lm_evals():
    lm_metrics = pytest.importorskip("lm_eval.api.metrics")
    values = [1.0, 0.0, 1.0, 1.0, 0.0]
    assert mean_stderr(values) == pytest.approx(lm_metrics.mean_stderr(values))


def test_evaluate_from_file(tiny, tmp_path):
    model, tok = tiny
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(json.dumps(q) for q in QUESTIONS) + "\n\n")
    questions = read_questions(path)
    assert [q.answer for q in questions] == [0, 0, 0]
    r = evaluate_choices(model, tok, questions, batch_size=3)
    assert r.n == 3 and 0 <= r.acc <= 1 and len(r.predictions) == 3


@pytest.mark.parametrize("line,message", [
    ('{"question": "q", "choices": ["a", "b"]}', "task.jsonl:2: missing field 'answer'"),
    ('{"question": "q", "answer": 0}', "task.jsonl:2: missing field 'choices'"),
    ('{"question": "q", "choices": ["a"], "answer": 0}', "task.jsonl:2: field 'choices' must be a list of at least 2"),
    ('{"question": "q", "choices": ["a", "b"], "answer": 2}', r"task.jsonl:2: field 'answer' must be a choice"),
    ('{"question": "q", "choices": ["a", "b"], "answer": "c"}', "task.jsonl:2: field 'answer' 'c' is not one"),
    ('{"question": 3, "choices": ["a", "b"], "answer": 0}', "task.jsonl:2: field 'question' must be a string"),
    ('{"question": "q",', "task.jsonl:2: not valid JSON"),
])
def test_bad_task_file(tmp_path, line, message):
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps(QUESTIONS[0]) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message):
        read_questions(path)


def test_empty_or_missing_task_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl is empty"):
        read_questions(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError, match="no such task file"):
        read_questions(tmp_path / "missing.jsonl")


def works(n: int) -> list[Document]:
    return [Document(f"Work {i}", " ".join(f"Passage {i} sentence {j} about the subject{i} here." for j in range(80)))
            for i in range(n)]


def test_builtin_tasks():
    docs = works(5)
    for make in (source_questions, cloze_questions):
        qs = make(docs, 40, seed=1)
        assert qs == make(docs, 40, seed=1) and len(qs) == 40  # deterministic
        assert all(len(q.choices) == 4 == len(set(q.choices)) for q in qs)
        assert len({q.answer for q in qs}) > 1  # the answer's position varies
    for q in source_questions(docs, 20):  # the passage comes from the work named by the answer
        n = q.choices[q.answer].split()[-1]
        assert f"subject{n} " in q.question
    for q in cloze_questions(docs, 20, context_words=10):  # the answer is the word that followed
        text = " ".join(d.text for d in docs)
        assert f"{q.question} {q.choices[q.answer]}" in text


def test_builtin_errors(tmp_path):
    with pytest.raises(ValueError, match="at least 4 works"):
        source_questions(works(3), 5)
    with pytest.raises(ValueError, match="unknown built-in task 'quiz:austen'"):
        builtin_questions("quiz:austen")
    (tmp_path / "a.txt").write_text("one two three " * 50)
    (tmp_path / "b.txt").write_text("four five six " * 50)
    with pytest.raises(ValueError, match="at least 4 works, the corpus has 2"):
        builtin_questions(f"source:{tmp_path}")
    assert len(builtin_questions(f"cloze:{tmp_path}", n=5)) == 5
