"""The next-token choice the long-context decoders share: llmkit's sampling processors on one step's logits.

The methods here drive the model step by step themselves (a rolling cache,
several contexts per step, ...), so they cannot reuse the decode loop; they
reuse its pieces instead (:func:`~llmkit.generate.sampling.process_logits`,
Gumbel-max selection). Repetition/presence penalties need the loop's token
counts and are not offered.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from llmkit.generate.sampling import SamplingParams, gumbel_noise, process_logits, select


def check_sampling(sampling: SamplingParams | None) -> SamplingParams:
    """``sampling`` validated (greedy when None); penalties are refused with a clear error."""
    sampling = (sampling or SamplingParams()).validate()
    if sampling.penalised:
        raise ValueError("repetition/presence/frequency penalties are not supported by the long-context decoders")
    return sampling


def next_token(logits: torch.Tensor, sampling: SamplingParams,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) scores -> (B,) chosen ids: argmax when greedy, else a Gumbel-max sample of the processed logits."""
    logits = process_logits(logits.float(), sampling)
    noise = None if sampling.greedy else gumbel_noise(tuple(logits.shape), logits.device, generator)
    return select(logits, noise)


def last_index(ids: torch.Tensor) -> torch.Tensor:
    """The model's ``logits_indices`` for only the last position of (B, T) ``ids``."""
    return torch.tensor([ids.shape[1] - 1], device=ids.device)


def generate_by_feeding(feed: Callable[[torch.Tensor], torch.Tensor], prompt: torch.Tensor, max_new_tokens: int,
                        sampling: SamplingParams | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Feed ``prompt`` (B, T) to a stateful decoder, then its chosen tokens one at a time.

    Args:
        feed: ``feed(ids, last_only=True)`` appends (B, T) ids to the decoder's state and returns the
            last one's logits (B, 1, V): a long prompt's logits are never all held (12k tokens of
            SmolLM2's 49k vocabulary would be 2.4 GB).
    Returns:
        (B, max_new_tokens) generated ids.
    """
    sampling = check_sampling(sampling)
    logits = feed(prompt, last_only=True)[:, -1]
    out = []
    for _ in range(max_new_tokens):
        out.append(next_token(logits, sampling, generator)[:, None])
        logits = feed(out[-1], last_only=True)[:, -1]
    return torch.cat(out, dim=1)
