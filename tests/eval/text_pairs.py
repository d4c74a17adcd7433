"""Hypothesis/reference pairs for the BLEU and ROUGE parity tests: random word soup that hits every
tokenizer rule, and real English (the repository's own README and docs) with the edits a system makes."""
from __future__ import annotations

import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# tokens that exercise 13a (&amp;, <skipped>, digits around , . -), intl (Unicode punctuation, symbols,
# digits) and ROUGE (case, stems, non-ASCII dropped)
SOUP = ("the The cat cats sat sitting on mat . , ; : ! ? a dog dogs 1,000 3.5 2024. - -- ( ) [ ] \" ' "
        "running runs ran happily happiness é ü 日本 语 & &amp; &quot; <skipped> 12-3 U.S. don't "
        "“quoted” — … € $5 © ½ ² ٣ x+y=z 100% a/b e-mail #tag @user").split()


def soup_pairs(n: int, seed: int) -> list[tuple[str, str, str]]:
    """``n`` (hypothesis, reference, second reference) triples of random tokens, empty lines included."""
    rng = random.Random(seed)

    def line() -> str:
        words = [rng.choice(SOUP) for _ in range(rng.randint(0, 18))]
        return "".join(w + rng.choice([" ", " ", " ", "", "\n"]) for w in words)

    return [(line(), line(), line()) for _ in range(n)]


def real_sentences() -> list[str]:
    """Sentences of the project's own prose (README, docs/*.md), code blocks dropped."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text)]
    return [s for s in sentences if 5 <= len(s.split()) <= 60]


def edit(sentence: str, rng: random.Random) -> str:
    """What a system does to a reference: drop, repeat, swap or change the case of some words."""
    words = sentence.split()
    out = []
    for w in words:
        r = rng.random()
        if r < 0.1:
            continue
        out.append(w.upper() if r < 0.15 else w)
        if r > 0.95:
            out.append(w)
    if len(out) > 2 and rng.random() < 0.5:
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    return " ".join(out)


def real_pairs(n: int, seed: int) -> list[tuple[str, str, str]]:
    """``n`` (edited sentence, its original, another edit of it as a second reference) triples."""
    rng = random.Random(seed)
    sentences = real_sentences()
    picks = [rng.choice(sentences) for _ in range(n)]
    return [(edit(s, rng), s, edit(s, rng)) for s in picks]
