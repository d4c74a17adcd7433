"""Which sequences run in the next step, and how many of their tokens: continuous batching. Plain Python.

Every step has a token budget (``max_num_batched_tokens``) and a cap on running
sequences (``max_num_seqs``). Running sequences go first, oldest first: a
decoding one needs a single token (or ``1 + k`` to verify k speculative
tokens), one still prefilling takes the next chunk of its prompt that fits the
budget (chunked prefill: a long prompt is spread over several steps and mixed
with the other sequences' decodes, so it does not stall them). Then waiting
sequences are admitted in arrival order while blocks, budget and slots last;
the first that does not fit stops admission (first come, first served: a
large request is not overtaken forever by small ones). The full blocks a step
will compute are registered in the prefix cache as it is planned, so prompts
admitted in the same step already share a common prefix that is still being
computed (instead of computing it again).

When a running sequence needs a new block and none is free, the most recently
admitted running sequence is preempted by recompute (vLLM's default): its
blocks are freed and it goes back to the front of the waiting queue keeping
its tokens, so on readmission it prefills prompt and output again (mostly
from the prefix cache) and continues exactly where it was.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from llmkit.engine.block_manager import BlockManager
from llmkit.engine.sequence import Sequence, SequenceStatus


@dataclass
class SchedulerOutput:
    """One step's work: ``scheduled`` (sequence, known tokens to feed) pairs, decodes (1 token) first.

    A decoding sequence also has ``lookahead`` more slots reserved for speculative tokens.
    """

    scheduled: list[tuple[Sequence, int]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write block copies to do first

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)


class Scheduler:
    """Waiting and running queues over one :class:`BlockManager`.

    Args:
        block_manager: the pool's blocks.
        max_num_seqs: running sequences at most.
        max_num_batched_tokens: tokens fed to the model per step at most.
        lookahead: extra slots a decoding sequence needs per step (speculative tokens to verify).
    """

    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 lookahead: int = 0):
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.lookahead = lookahead
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def add_running(self, seq: Sequence) -> None:
        """A forked sequence: it already holds its (shared) blocks."""
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def finish(self, seq: Sequence) -> None:
        """Remove ``seq`` from the queues and free its blocks (finished or aborted)."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.num_computed_tokens = seq.draft_computed = 0
        seq.status = SequenceStatus.WAITING
        seq.request.metrics.num_preemptions += 1
        self.waiting.appendleft(seq)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        for seq in list(self.running):
            if seq not in self.running:  # preempted below to make room for an older one
                continue
            extra = self.lookahead if seq.num_uncomputed == 1 else 0  # slots for the drafts to verify
            n = min(seq.num_uncomputed, budget - extra)
            if n <= 0:
                break
            while not self.blocks.can_append(seq, seq.num_computed_tokens + n + extra):
                victim = self.running[-1]
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            if copy := self.blocks.append_slots(seq, seq.num_computed_tokens + n + extra):
                out.copies.append(copy)
            out.scheduled.append((seq, n))
            self.blocks.mark_computed(seq, seq.num_computed_tokens + n)
            budget -= n + extra
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not out.preempted:
            seq = self.waiting[0]
            if not self.blocks.can_allocate(seq):
                break
            self.waiting.popleft()
            self.blocks.allocate(seq)
            if seq.num_output_tokens == 0:  # first admission (not a resumption after preemption)
                seq.request.metrics.num_cached_tokens = seq.num_computed_tokens
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            n = min(seq.num_uncomputed, budget)
            out.scheduled.append((seq, n))
            self.blocks.mark_computed(seq, seq.num_computed_tokens + n)  # the next admissions may share them
            budget -= n
        out.scheduled.sort(key=lambda item: item[1] != 1)  # decodes first (stable: FCFS within each kind)
        return out
