"""llmperf's workload model: prompts of a random length drawn around a mean, asking for a random number of tokens.

Each request's input and output lengths are drawn from normal distributions
(``MEAN:STD``, clipped to at least 1). As in llmperf, the prompt asks the model
to repeat lines of Shakespeare's sonnets, then pads with randomly chosen lines
until the prompt has the drawn number of tokens, and ``max_tokens`` is the drawn
output length. Lengths are counted with the served model's tokenizer when one is
given; otherwise with a words-to-tokens estimate (the measured counts then come
from the server's ``usage``).
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

SONNET_LINES = """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.
Let me not to the marriage of true minds
Admit impediments. Love is not love
Which alters when it alteration finds,
Or bends with the remover to remove.
O no! it is an ever-fixed mark
That looks on tempests and is never shaken;
It is the star to every wand'ring bark,
Whose worth's unknown, although his height be taken.
Love's not Time's fool, though rosy lips and cheeks
Within his bending sickle's compass come;
Love alters not with his brief hours and weeks,
But bears it out even to the edge of doom.
If this be error and upon me prov'd,
I never writ, nor no man ever lov'd.""".splitlines()

INSTRUCTION = ("Randomly stream lines from the following text with {n} output tokens. "
               "Don't generate eos tokens:\n\n")


def parse_length(spec: str, name: str) -> tuple[float, float]:
    """``"MEAN"`` or ``"MEAN:STD"`` -> (mean, std); ValueError naming ``name`` otherwise."""
    try:
        parts = [float(p) for p in spec.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or parts[0] < 1 or (len(parts) == 2 and parts[1] < 0):
        raise ValueError(f"--{name} must be MEAN or MEAN:STD with MEAN >= 1 and STD >= 0, got {spec!r}")
    return parts[0], parts[1] if len(parts) == 2 else 0.0


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate: English BPE averages about 4/3 tokens per word."""
    return max(1, round(len(text.split()) * 4 / 3))


@dataclass(frozen=True)
class RequestSpec:
    prompt: str
    max_tokens: int
    input_tokens: int  # as counted when the prompt was built


def make_requests(n: int, input_tokens: tuple[float, float], output_tokens: tuple[float, float], seed: int = 0,
                  count: Callable[[str], int] = estimate_tokens, variant: int = 0) -> list[RequestSpec]:
    """``n`` requests of llmperf's workload.

    Args:
        n: how many.
        input_tokens: (mean, std) of the prompt length in tokens.
        output_tokens: (mean, std) of ``max_tokens``.
        seed: seeds the lengths and the lines chosen.
        count: token counter of the served model's tokenizer.
        variant: another choice of lines for the same lengths: each concurrency of a run gets its own,
            so no server answers a later run from the prompt cache an earlier one filled.
    """
    lengths, rng = random.Random(seed), random.Random(f"{seed}/{variant}")
    out = []
    for _ in range(n):
        want_in = max(1, round(lengths.gauss(*input_tokens)))
        want_out = max(1, round(lengths.gauss(*output_tokens)))
        prompt = INSTRUCTION.format(n=want_out)
        used = count(prompt)
        lines = SONNET_LINES[:]
        while used < want_in:
            line = rng.choice(lines) + "\n"
            size = count(line)
            if used + size > want_in:  # cut the last line to land on the drawn length
                words = line.split()
                while words and used + count(" ".join(words)) > want_in:
                    words.pop()
                if not words:
                    break
                line = " ".join(words)
                size = count(line)
            prompt += line
            used += size
        out.append(RequestSpec(prompt, want_out, used))
    return out
