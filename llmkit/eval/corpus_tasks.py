"""Built-in multiple-choice tasks generated offline from llmkit's corpora (or any text folder).

Two generators, named ``KIND:CORPUS`` on the command line
(``--data cloze:shakespeare``), where ``CORPUS`` is a name in
:data:`llmkit.data.CORPORA` or a path :func:`llmkit.data.load_corpus` reads:

* ``source``: "which work is this passage from?" A passage of about
  ``passage_chars`` characters from one work; the choices are its title and
  ``n_choices - 1`` other titles of the corpus. Works are drawn uniformly,
  so long works do not dominate. It needs at least ``n_choices`` works.
* ``cloze``: LAMBADA-style next-word prediction. About ``context_words``
  words of running text; the choices are the true next word and words drawn
  from the same text. Corpora with a fixed held-out split (shakespeare,
  austen: :data:`llmkit.data.HELD_OUT`) use only the held-out works, so a
  model trained by llmkit on the training split is tested on text it has
  not seen.

Both are deterministic given ``seed``, and each question's answer position is
random, so always picking one position scores 1 / ``n_choices``.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable

from llmkit.data import HELD_OUT, Document, load_corpus, split_documents
from llmkit.eval.multiple_choice import Question

_WORD = re.compile(r"^[A-Za-z]{3,}$")


def _shuffled(rng: random.Random, right: str, wrong: list[str]) -> tuple[tuple[str, ...], int]:
    choices = [right, *wrong]
    rng.shuffle(choices)
    return tuple(choices), choices.index(right)


def source_questions(docs: list[Document], n: int, *, n_choices: int = 4, passage_chars: int = 400,
                     seed: int = 0) -> list[Question]:
    """``n`` "which work is this passage from" questions over the works (titles) of ``docs``."""
    works: dict[str, list[str]] = {}
    for d in docs:
        works.setdefault(d.title, []).append(d.text)
    if len(works) < n_choices:
        raise ValueError(f"the source task needs at least {n_choices} works, the corpus has {len(works)}")
    rng, titles, out = random.Random(seed), sorted(works), []
    for _ in range(n):
        title = rng.choice(titles)
        words = rng.choice(works[title]).split()
        n_words = max(1, passage_chars // 6)  # ~6 characters per English word and space
        start = rng.randrange(max(1, len(words) - n_words))
        passage = " ".join(words[start:start + n_words])
        choices, answer = _shuffled(rng, title, rng.sample([t for t in titles if t != title], n_choices - 1))
        out.append(Question(f"Passage: {passage}\nThis passage is from", choices, answer))
    return out


def cloze_questions(docs: list[Document], n: int, *, n_choices: int = 4, context_words: int = 60,
                    seed: int = 0) -> list[Question]:
    """``n`` next-word questions: ``context_words`` words of text, then the true word among distractors."""
    words = " ".join(d.text for d in docs).split()
    vocab = sorted({w for w in words if _WORD.match(w)})
    if len(vocab) < n_choices or len(words) <= context_words:
        raise ValueError(f"the cloze task needs more than {context_words} words of text and {n_choices} "
                         f"distinct words; the corpus has {len(words)} and {len(vocab)}")
    rng, out, tries = random.Random(seed), [], 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n:
            raise ValueError("the cloze task found too few plain words (3+ letters) to ask about in the corpus")
        end = rng.randrange(context_words, len(words))
        target = words[end]
        if not _WORD.match(target):  # punctuation-glued or short words make ambiguous answers
            continue
        wrong = []
        while len(wrong) < n_choices - 1:
            w = rng.choice(vocab)
            if w != target and w not in wrong:
                wrong.append(w)
        choices, answer = _shuffled(rng, target, wrong)
        out.append(Question(" ".join(words[end - context_words:end]), choices, answer))
    return out


BUILTIN_TASKS: dict[str, Callable[..., list[Question]]] = {"source": source_questions, "cloze": cloze_questions}


def builtin_questions(spec: str, n: int = 200, seed: int = 0) -> list[Question]:
    """Questions of a ``KIND:CORPUS`` spec (e.g. ``cloze:shakespeare``, ``source:austen``, ``cloze:my_texts/``).

    Raises:
        ValueError: an unknown kind or corpus, or a corpus too small for the task.
    """
    kind, _, corpus = spec.partition(":")
    if kind not in BUILTIN_TASKS or not corpus:
        raise ValueError(f"unknown built-in task {spec!r}: use KIND:CORPUS with KIND one of "
                         f"{', '.join(BUILTIN_TASKS)} (e.g. cloze:shakespeare)")
    docs = load_corpus(corpus)
    if kind == "cloze" and corpus in HELD_OUT:
        docs = split_documents(docs, corpus)[1]
    return BUILTIN_TASKS[kind](docs, n, seed=seed)
