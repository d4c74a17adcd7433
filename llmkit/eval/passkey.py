"""Passkey retrieval: can the model find a number hidden at a given depth of a long, dull context?

The standard test of Mohtashami & Jaggi (Landmark Attention, 2023), used by
the position-interpolation and YaRN papers: an instruction, the filler "The
grass is green. The sky is blue. The sun is yellow. Here we go. There and
back again." repeated to the target length, the needle "The pass key is N.
Remember it. N is the pass key." inserted at a fraction ``depth`` of the
filler, and the question "What is the pass key? The pass key is". The model
completes greedily and is right when the first number it writes is ``N``.
Lengths are in tokens of the model's own tokenizer (the whole prompt), so a
grid of lengths x depths shows exactly where retrieval breaks; the heatmap
plots accuracy per cell.
"""
from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmkit.eval.scoring import context_length

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
         "I will quiz you about the important information there.\n\n")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\n\nWhat is the pass key? The pass key is"
KEY_DIGITS = 5
_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True)
class PasskeyResult:
    """Accuracy per (length, depth) cell, ``accuracy[i][j]`` for ``lengths[i]`` and ``depths[j]``."""

    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    accuracy: tuple[tuple[float, ...], ...]
    trials: int

    @property
    def mean(self) -> float:
        cells = [a for row in self.accuracy for a in row]
        return sum(cells) / len(cells)


def passkey_prompt(tokenizer, length: int, depth: float, key: int) -> str:
    """A prompt of about ``length`` tokens with the needle at fraction ``depth`` (0 = start) of the filler.

    Raises:
        ValueError: a depth outside [0, 1], or a length too short to hold the instruction, needle and question.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    needle = NEEDLE.format(key=key)

    def n_tokens(k: int) -> int:
        return len(tokenizer.encode(INTRO + FILLER * k + needle + QUESTION))

    fixed, per_filler = n_tokens(0), n_tokens(1) - n_tokens(0)
    if length < fixed:
        raise ValueError(f"length {length} is shorter than the passkey prompt without filler ({fixed} tokens)")
    k = (length - fixed) // max(per_filler, 1)
    while k > 0 and n_tokens(k) > length:  # filler merges at its joins can cost a token or two more
        k -= 1
    before = round(k * depth)
    return INTRO + FILLER * before + needle + FILLER * (k - before) + QUESTION


def answer_key(text: str) -> int | None:
    """The first number the model wrote, or None."""
    match = _NUMBER.search(text)
    return int(match.group()) if match else None


def passkey(model, tokenizer, lengths: Sequence[int], depths: Sequence[float], *, trials: int = 3,
            seed: int = 0, batch_size: int = 4) -> PasskeyResult:
    """Greedy passkey accuracy over a grid of prompt lengths (tokens) and needle depths.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        lengths: prompt lengths in tokens; each must leave room for the answer in the model's context.
        depths: needle positions as fractions of the filler, in [0, 1].
        trials: random keys per cell.
        seed: makes the keys reproducible.
        batch_size: prompts generated together.
    Raises:
        ValueError: an empty grid, a bad depth, or a length beyond the model's context.
    """
    from llmkit.generate import generate

    if not lengths or not depths or trials < 1:
        raise ValueError("passkey needs at least one length, one depth and one trial")
    ctx, answer_tokens = context_length(model), KEY_DIGITS + 3
    for length in lengths:
        if length + answer_tokens > ctx:
            raise ValueError(f"length {length} + {answer_tokens} answer tokens exceeds the model's context of "
                             f"{ctx} tokens")
    rng = random.Random(seed)
    cells = [(i, j, rng.randrange(10 ** (KEY_DIGITS - 1), 10 ** KEY_DIGITS))
             for i in range(len(lengths)) for j in range(len(depths)) for _ in range(trials)]
    prompts = [passkey_prompt(tokenizer, lengths[i], depths[j], key) for i, j, key in cells]
    hits = [[0] * len(depths) for _ in lengths]
    for start in range(0, len(cells), batch_size):
        batch = cells[start:start + batch_size]
        out = generate(model, tokenizer, prompts[start:start + batch_size], max_new_tokens=answer_tokens)
        for (i, j, key), text in zip(batch, out.texts):
            hits[i][j] += answer_key(text) == key
    accuracy = tuple(tuple(h / trials for h in row) for row in hits)
    return PasskeyResult(tuple(lengths), tuple(depths), accuracy, trials)


def plot_heatmap(result: PasskeyResult, path: str | Path, title: str = "Passkey retrieval") -> Path:
    """Save accuracy per (depth, length) as a PNG heatmap (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmkit.io.atomic import atomic_path

    grid = [[result.accuracy[i][j] for i in range(len(result.lengths))] for j in range(len(result.depths))]
    width, height = max(5.0, 1.5 + 0.9 * len(result.lengths)), max(3.0, 1.2 + 0.5 * len(result.depths))
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(result.lengths)), [str(n) for n in result.lengths])
    ax.set_yticks(range(len(result.depths)), [f"{d:.0%}" for d in result.depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    keys = f"{result.trials} key{'s' if result.trials > 1 else ''}"
    ax.set_title(f"{title}\n{keys} per cell, mean accuracy {result.mean:.2f}", fontsize=10)
    for j, row in enumerate(grid):
        for i, a in enumerate(row):
            ax.text(i, j, f"{a:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
