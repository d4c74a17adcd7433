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
loss scaled by its size (what :class:`llmkit.train.Trainer` does with
``sequence_parallel="ring" | "ulysses"``). :func:`shard_batch` shards a
training batch's inputs and targets together, right-padding them to a
multiple of the group size first: padding after the last token changes no
earlier token's causal attention, and its ``-100`` targets add no loss.

Causal attention only: no padding mask, no sliding window, no KV cache
(this is for training and scoring long sequences).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from llmkit.longctx.swap import swap_attention
from llmkit.config import ModelConfig
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
        q, k, v = self.base.project_qkv(x)
        if meta.rope is not None:
            layout = self.base.cfg.rope_layout
            q, k = apply_rope(q, *meta.rope, layout=layout), apply_rope(k, *meta.rope, layout=layout)
        return self.base.project_out(self.attend(q, k, v, causal=True, group=self.group))


def check_sequence_parallel(cfg: ModelConfig, method: str, world: int) -> None:
    """Raise ``ValueError`` if a model of ``cfg`` cannot run with ``method`` over ``world`` ranks."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if cfg.attention != "mha":
        raise ValueError(f"sequence parallelism needs standard attention (attention='mha'), not {cfg.attention!r}")
    if cfg.sliding_window is not None:
        raise ValueError("sequence parallelism supports plain causal attention, not sliding_window")
    if method == "ulysses" and cfg.n_heads % world:
        raise ValueError(f"Ulysses needs the {world} ranks to divide the model's {cfg.n_heads} attention heads")


@contextmanager
def sequence_parallel(model: CausalLM, method: Literal["ring", "ulysses"] = "ring",
                      group: dist.ProcessGroup | None = None) -> Iterator[CausalLM]:
    """Inside the block, ``model``'s attention spans the sequence chunks of every rank of ``group``."""
    check_sequence_parallel(model.cfg, method, dist.get_world_size(group))
    with swap_attention(model, lambda attn: SequenceParallelAttention(attn, method, group)):
        yield model


def chunk_positions(chunk: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """(B, n) position ids of this rank's contiguous chunk ``chunk`` (B, n) of a sequence split evenly over ``group``."""
    b, n = chunk.shape
    start = dist.get_rank(group) * n
    return torch.arange(start, start + n, device=chunk.device)[None].expand(b, n)


def shard_sequence(ids: torch.Tensor, group: dist.ProcessGroup | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's contiguous chunk of ``ids`` (B, T) and its position ids, both (B, T/P); P must divide T."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    t = ids.shape[1]
    if t % world:
        raise ValueError(f"sequence length {t} is not divisible by the {world} ranks of the group")
    chunk = ids[:, rank * t // world:(rank + 1) * t // world]
    return chunk, chunk_positions(chunk, group)


def shard_batch(x: torch.Tensor, y: torch.Tensor, group: dist.ProcessGroup | None = None,
                ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's chunks of inputs ``x`` and targets ``y`` (B, T), right-padded to a multiple of P first.

    Returns:
        (x, y) chunks, each (B, ceil(T/P)); padding is token 0 with target ``ignore_index``.
    """
    pad = -x.shape[1] % dist.get_world_size(group)
    if pad:
        x, y = F.pad(x, (0, pad)), F.pad(y, (0, pad), value=ignore_index)
    return shard_sequence(x, group)[0], shard_sequence(y, group)[0]
