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
from llmkit.generate.argmax import argmax


@dataclass(frozen=True)
class SamplingParams:
    """Parameters of next-token selection; defaults are greedy decoding with no penalties.

    The fields after ``frequency_penalty`` describe a whole request (length, stops, seed, the
    number of continuations, log-probabilities); the inference engine (:mod:`llmkit.engine`)
    reads them, while :func:`llmkit.generate.generate` takes the same things as arguments.
    """

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
    # ----- per request (the engine's) -----
    max_tokens: int = field(default=256, metadata={"request": True, "help": "tokens to generate at most"})
    stop: tuple[str, ...] = field(default=(), metadata={"request": True, "help":
        "strings that end generation (not included in the text)"})
    stop_token_ids: tuple[int, ...] = field(default=(), metadata={"request": True, "help":
        "token ids that end generation, besides EOS"})
    ignore_eos: bool = field(default=False, metadata={"request": True, "help": "keep generating after EOS"})
    seed: int | None = field(default=None, metadata={"request": True, "help":
        "seed of this request's sampling (None = the engine's random state)"})
    n: int = field(default=1, metadata={"request": True, "help": "continuations to generate from the prompt"})
    logprobs: int | None = field(default=None, metadata={"request": True, "help":
        "report the log-probabilities of each generated token and of this many alternatives (None = off)"})

    def __post_init__(self):
        # a single stop string, or lists, are accepted and stored as tuples (the dataclass is frozen)
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        object.__setattr__(self, "stop", tuple(stop) if isinstance(stop, (list, tuple)) else stop)
        if isinstance(self.stop_token_ids, list):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

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
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) for s in self.stop):
            raise ValueError(f"stop must be a string or a list of strings, got {self.stop!r}")
        if not all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be non-negative integers, got {self.stop_token_ids!r}")
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n!r}")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or self.logprobs < 0):
            raise ValueError(f"logprobs must be an integer >= 0 or None, got {self.logprobs!r}")
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


def gumbel_noise(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) standard Gumbel noise, ``-log(-log U)`` with ``U ~ Uniform(0, 1)``, drawn from ``generator``."""
    # from uniforms rather than Tensor.exponential_, which on the CPU took 0.93 ms for one row of a
    # 49k vocabulary (7x torch.rand): a millisecond of every sampled batch-1 decode step
    u = torch.rand(shape, device=device, generator=generator)
    return u.clamp_(min=torch.finfo(u.dtype).tiny).log_().neg_().log_().neg_()


def select(logits: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """Next token of each row: argmax of ``logits`` (+ Gumbel ``noise`` to sample).

    Args:
        logits: (B, V) processed logits.
        noise: (B, V) from :func:`gumbel_noise`, or None for greedy decoding.
    Returns:
        (B,) int64 token ids.
    """
    return argmax(logits if noise is None else logits + noise)
