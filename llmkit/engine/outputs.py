"""What the engine returns: :class:`RequestOutput` with one :class:`CompletionOutput` per continuation (vLLM's shapes)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmkit.engine.sequence import RequestMetrics


@dataclass
class CompletionOutput:
    """One continuation so far.

    ``text`` excludes the token that ended it (EOS or a stop id) and is cut before a stop
    string; while it runs, a tail that may still become a stop string is held back.
    ``token_ids`` keep every generated id, including one that ended it.
    """

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "abort"; None while running
    logprobs: list[dict[int, float]] | None = None  # per token: {id: logprob}, the chosen id first

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """A request's state after a step (cumulative), or, from :class:`AsyncLLMEngine`, what is new since the last."""

    request_id: str
    prompt: Any
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics = field(repr=False)
