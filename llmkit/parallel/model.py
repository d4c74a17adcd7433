"""A whole CausalLM run sequence-parallel: each rank feeds its chunk of the sequence, attention spans them all.

Inside ``with sequence_parallel(model, "ring" | "ulysses"):`` every layer's
attention keeps its weights but runs :func:`ring_attention` or
:func:`ulysses_attention` over the process group; everything else in a
transformer (norms, MLP, embeddings, the LM head) is per-token and needs no
communication. :func:`shard_sequence` gives each rank its contiguous chunk and
the matching position ids, so ``model(ids, position_ids=positions)`` returns
this rank's logits exactly as a single process would compute them for those
positions. The loss of the whole sequence is the sum of the ranks' losses;
since weights are replicated, each rank's weight gradients must be summed
over the group (``all_reduce``), or averaged by DDP over that group with the
loss scaled by its size.

Causal attention only: no padding mask, no sliding window, no KV cache
(this is for training and scoring long sequences).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from llmkit.longctx.swap import project_out, project_qkv, swap_attention
from llmkit.model import CausalLM
from llmkit.model.attention import Attention
from llmkit.model.metadata import AttentionMetadata
from llmkit.model.rope import apply_rope
from llmkit.parallel.ring import ring_attention
from llmkit.parallel.ulysses import ulysses_attention

METHODS = {"ring": ring_attention, "ulysses": ulysses_attention}


class SequenceParallelAttention(nn.Module):
    """``base``'s projections around a sequence-parallel attention core."""

    def __init__(self, base: Attention, method: Literal["ring", "ulysses"], group: dist.ProcessGroup | None):
        super().__init__()
        self.base, self.attend, self.group = base, METHODS[method], group

    def forward(self, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        if meta.input_pos is not None or meta.prefix_kv is not None:
            raise ValueError("sequence parallelism runs without a KV cache or prefix_kv")
        q, k, v = project_qkv(self.base, x)
        if meta.rope is not None:
            layout = self.base.cfg.rope_layout
            q, k = apply_rope(q, *meta.rope, layout=layout), apply_rope(k, *meta.rope, layout=layout)
        return project_out(self.base, self.attend(q, k, v, causal=True, group=self.group))


@contextmanager
def sequence_parallel(model: CausalLM, method: Literal["ring", "ulysses"] = "ring",
                      group: dist.ProcessGroup | None = None) -> Iterator[CausalLM]:
    """Inside the block, ``model``'s attention spans the sequence chunks of every rank of ``group``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if model.cfg.sliding_window is not None:
        raise ValueError("sequence parallelism supports plain causal attention, not sliding_window")
    with swap_attention(model, lambda attn: SequenceParallelAttention(attn, method, group)):
        yield model


def shard_sequence(ids: torch.Tensor, group: dist.ProcessGroup | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's contiguous chunk of ``ids`` (B, T) and its position ids, both (B, T/P); P must divide T."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    b, t = ids.shape
    if t % world:
        raise ValueError(f"sequence length {t} is not divisible by the {world} ranks of the group")
    n = t // world
    positions = torch.arange(rank * n, (rank + 1) * n, device=ids.device)[None].expand(b, n)
    return ids[:, rank * n:(rank + 1) * n], positions
