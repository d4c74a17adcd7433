"""PCW: parallel context windows (Ratner et al. 2023, "Parallel Context Windows for Large Language Models").

A long context is cut into windows that are encoded independently, each
with positions starting at 0, so no position exceeds the longest window.
Their key/value caches are then concatenated, and the task tokens (the
question, then the answer as it is generated) are positioned right after the
longest window and attend to every window and to each other causally. The
model thus reads ``n`` windows' worth of context while only ever seeing
positions of one window plus the task.

Design. All windows and the task share one row of the model's ordinary
static cache, laid out back to back. A window is encoded with the padding
mask (``attention_mask``) hiding every earlier window's slots and with
explicit ``position_ids`` from 0; the task tokens come next, with no mask
beyond causality and positions from the longest window's length. So PCW is
three calls of the model's public forward, and one window is exactly plain
attention over window + task.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from llmkit.generate.sampling import SamplingParams
from llmkit.longctx.sampling import check_sampling, next_token
from llmkit.model import CausalLM


class ParallelContext:
    """Windows encoded in parallel into one cache row, then task tokens appended after them.

    Args:
        model: the language model (eval mode).
        windows: token ids of each window.
        max_task_tokens: room in the cache (and in positions) for the task tokens and the answer.
    """

    @torch.no_grad()
    def __init__(self, model: CausalLM, windows: Sequence[Sequence[int]], max_task_tokens: int):
        if not windows or any(len(w) == 0 for w in windows):
            raise ValueError("need at least one window, none of them empty")
        longest = max(map(len, windows))
        if longest + max_task_tokens > model.cfg.max_seq_len:
            raise ValueError(f"the longest window ({longest} tokens) + max_task_tokens ({max_task_tokens}) exceeds "
                             f"the model's context ({model.cfg.max_seq_len}): use more, shorter windows")
        self.model, self.device = model, model.device
        self.next_slot, self.next_position = sum(map(len, windows)), longest
        self.capacity = self.next_slot + max_task_tokens
        model.setup_caches(1, self.capacity)
        start = 0
        for w in windows:
            n = len(w)
            visible = torch.zeros(1, start + n, dtype=torch.long, device=self.device)
            visible[:, start:] = 1  # this window's own slots; earlier windows are hidden
            slots = torch.arange(start, start + n, device=self.device)
            model(torch.tensor([list(w)], device=self.device), input_pos=slots, attention_mask=visible,
                  position_ids=torch.arange(n, device=self.device)[None],
                  logits_indices=torch.tensor([n - 1], device=self.device))  # only the cache is wanted
            start += n

    @torch.no_grad()
    def append(self, ids: Sequence[int]) -> torch.Tensor:
        """Run task tokens after everything so far; returns their next-token logits (T, vocab)."""
        t = len(ids)
        if self.next_slot + t > self.capacity:
            raise ValueError(f"{t} more task tokens exceed max_task_tokens")
        slots = torch.arange(self.next_slot, self.next_slot + t, device=self.device)
        positions = torch.arange(self.next_position, self.next_position + t, device=self.device)[None]
        logits = self.model(torch.tensor([list(ids)], device=self.device), input_pos=slots, position_ids=positions)
        self.next_slot += t
        self.next_position += t
        return logits[0]


def pcw_generate(model: CausalLM, windows: Sequence[Sequence[int]], task: Sequence[int], max_new_tokens: int, *,
                 sampling: SamplingParams | None = None, stop_ids: Sequence[int] = (),
                 generator: torch.Generator | None = None) -> list[int]:
    """Answer ``task`` (token ids) reading all ``windows`` in parallel; returns the generated ids.

    Generation stops after ``max_new_tokens`` or at a token in ``stop_ids`` (included).
    """
    sampling = check_sampling(sampling)
    if not task or max_new_tokens < 1:
        raise ValueError("need non-empty task tokens and max_new_tokens >= 1")
    ctx = ParallelContext(model, windows, len(task) + max_new_tokens)
    logits = ctx.append(task)[-1]
    out: list[int] = []
    while True:
        out.append(int(next_token(logits[None], sampling, generator)))
        if out[-1] in stop_ids or len(out) == max_new_tokens:
            return out
        logits = ctx.append(out[-1:])[-1]
