"""The records the engine's parts share: :class:`Sequence` (one generated continuation) and :class:`Request`.

A request asks for ``n`` continuations of one prompt; each is a
:class:`Sequence`, which is what the scheduler queues, the block manager gives
blocks to, and the model runner feeds. A sequence's tokens are its prompt and
its output so far; ``num_computed_tokens`` of them have K/V in the cache, and
the rest (the last sampled token, or a prompt not yet prefilled, or all of it
after a preemption) are what the next steps feed the model. Only plain Python
here: the scheduler and block manager are tested without torch.
"""
from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued, holds no blocks
    RUNNING = "running"  # holds blocks, scheduled every step
    FINISHED = "finished"


@dataclass
class RequestMetrics:
    """Timings (``time.time()`` seconds) and cache use of one request."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    num_preemptions: int = 0
    spec_proposed_tokens: int = 0  # speculative decoding: draft tokens proposed ...
    spec_accepted_tokens: int = 0  # ... and accepted
    spec_target_steps: int = 0  # target forwards that verified drafts

    @property
    def queue_time(self) -> float | None:
        """Seconds from arrival to the first step that ran the request."""
        return None if self.first_scheduled_time is None else self.first_scheduled_time - self.arrival_time

    @property
    def ttft(self) -> float | None:
        """Seconds from arrival to the first generated token."""
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def acceptance_rate(self) -> float | None:
        """Share of proposed draft tokens the target accepted (None without speculation)."""
        return self.spec_accepted_tokens / self.spec_proposed_tokens if self.spec_proposed_tokens else None

    @property
    def tokens_per_target_step(self) -> float | None:
        """Tokens generated per verifying target forward (None without speculation)."""
        if not self.spec_target_steps:
            return None
        return (self.spec_accepted_tokens + self.spec_target_steps) / self.spec_target_steps


class Sequence:
    """One continuation: its tokens, cache state and stopping rule.

    Args:
        request: the request it belongs to.
        index: which of the request's ``n`` continuations it is.
        token_ids: the prompt (a fork copies its parent's tokens so far).
    """

    def __init__(self, request: Request, index: int, token_ids: list[int]):
        self.seq_id = next(_ids)
        self.request = request
        self.index = index
        self.token_ids = list(token_ids)
        self.num_prompt_tokens = len(request.prompt_token_ids)
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []  # prefix-cache hashes of the leading full computed blocks
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None
        self.logprobs: list[dict[int, float]] = []  # per generated token: {token: logprob}, sampled token first
        self.draft_computed = 0  # speculative decoding: tokens in the draft model's cache
        self.spec_state: Any = None  # lookahead decoding: this sequence's guesses and n-gram pool

    @property
    def params(self) -> Any:
        return self.request.params

    @property
    def lora_name(self) -> str | None:
        return self.request.lora_name

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed(self) -> int:
        """Tokens the model has not seen yet (at least 1 while running)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, request={self.request.request_id!r}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, {self.status.value})")


@dataclass
class Request:
    """A prompt and what to generate from it; ``seqs`` fills as continuations start."""

    request_id: str
    prompt: Any  # as given: text, token ids or a conversation
    prompt_token_ids: list[int]
    params: Any  # llmkit.generate.SamplingParams
    max_tokens: int  # params.max_tokens clipped to the context
    arrival_time: float = field(default_factory=time.time)
    lora_name: str | None = None  # the LoRA adapter it runs under (multi-LoRA serving); None = the base model
    seqs: list[Sequence] = field(default_factory=list)
    metrics: RequestMetrics = field(init=False)

    def __post_init__(self):
        self.metrics = RequestMetrics(self.arrival_time)

    @property
    def finished(self) -> bool:
        return len(self.seqs) == self.params.n and all(s.finished for s in self.seqs)
