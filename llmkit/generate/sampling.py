"""How the next token is chosen: :class:`SamplingParams` and the on-device sampler.

The whole choice is tensor code so it runs inside the compiled decode step
with no host round-trip: logits go through :func:`process_logits` (the
processors of ``processors.py`` that the parameters switch on), then
:func:`select` takes the argmax, either plainly (greedy) or after adding
Gumbel noise, which samples from ``softmax(logits)`` exactly (the Gumbel-max
trick) without a ``torch.multinomial`` call. The noise is drawn outside the
compiled region from a ``torch.Generator``, which is what makes a seed
reproduce a run.

Penalty state lives in two (B, V) tensors owned by the decode loop:
``prompt_seen`` (bool, fixed) and ``counts`` (float, generated tokens so far).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmkit.generate import processors as P


@dataclass(frozen=True)
class SamplingParams:
    """Parameters of next-token selection; defaults are greedy decoding with no penalties."""

    temperature: float = field(default=0.0, metadata={"help":
        "0 = greedy (argmax); > 0 samples from softmax(logits / temperature)"})
    top_k: int = field(default=0, metadata={"help": "sample among the k most likely tokens (0 = off)"})
    top_p: float = field(default=1.0, metadata={"help":
        "sample from the smallest set with this much probability mass, in (0, 1] (1 = off)"})
    min_p: float = field(default=0.0, metadata={"help": "drop tokens below min_p * max probability (0 = off)"})
    repetition_penalty: float = field(default=1.0, metadata={"help":
        "transformers' penalty on prompt and generated tokens (1 = off)"})
    presence_penalty: float = field(default=0.0, metadata={"help":
        "OpenAI's penalty on generated tokens, in [-2, 2] (0 = off)"})
    frequency_penalty: float = field(default=0.0, metadata={"help":
        "OpenAI's per-occurrence penalty on generated tokens, in [-2, 2] (0 = off)"})

    def validate(self) -> SamplingParams:
        """Check every value; raise ValueError naming the first bad one."""
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must be in [-2, 2] (0 = off), got {getattr(self, name)}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalised(self) -> bool:
        """Whether the decode loop must track which tokens were seen."""
        return self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0


def process_logits(logits: torch.Tensor, params: SamplingParams, prompt_seen: torch.Tensor | None = None,
                   counts: torch.Tensor | None = None) -> torch.Tensor:
    """Apply the processors ``params`` switches on, in transformers' order.

    Args:
        logits: (B, V) float32 next-token scores.
        params: the sampling parameters.
        prompt_seen: (B, V) bool, tokens present in each prompt; needed when ``params.penalised``.
        counts: (B, V) float, occurrences of each generated token; needed when ``params.penalised``.
    Returns:
        (B, V) processed logits; filtered tokens are ``-inf``. Greedy decoding skips the
        warpers (temperature, top-k/p, min-p) since they never change the argmax.
    """
    if params.repetition_penalty != 1:
        logits = P.repetition_penalty(logits, prompt_seen | (counts > 0), params.repetition_penalty)
    if params.presence_penalty or params.frequency_penalty:
        logits = P.presence_frequency_penalty(logits, counts, params.presence_penalty, params.frequency_penalty)
    if params.greedy:
        return logits
    logits = P.temperature(logits, params.temperature)
    if params.top_k:
        logits = P.top_k(logits, params.top_k)
    if params.top_p < 1:
        logits = P.top_p(logits, params.top_p)
    if params.min_p > 0:
        logits = P.min_p(logits, params.min_p)
    return logits


def gumbel_noise(shape: tuple[int, int], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) standard Gumbel noise, ``-log(E)`` with ``E ~ Exp(1)``, drawn from ``generator``."""
    return torch.empty(shape, device=device).exponential_(generator=generator).log_().neg_()


def select(logits: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """Next token of each row: argmax of ``logits`` (+ Gumbel ``noise`` to sample).

    Args:
        logits: (B, V) processed logits.
        noise: (B, V) from :func:`gumbel_noise`, or None for greedy decoding.
    Returns:
        (B,) int64 token ids.
    """
    return (logits if noise is None else logits + noise).argmax(dim=-1)
