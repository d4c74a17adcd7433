"""InfLLM (Xiao et al. 2024, "InfLLM: Training-Free Long-Context Extrapolation for LLMs with an Efficient
Context Memory"): evicted tokens kept in blocks, each standing for itself by a few representative keys.

Tokens leaving the local window are grouped into blocks of ``block_size``;
each block keeps, per K/V head, the keys of its ``n_repr`` tokens with the
highest representative score (the attention they drew inside their window).
For a chunk of queries, a block's relevance is the dot product of the mean
query with its representative keys, summed; the ``topk`` most relevant
blocks (per batch row and K/V head) join the global part of attention, with
the not-yet-full last block, which is always attended. Attention, sinks and
positions are the shared core in :mod:`llmkit.longctx.memory`.
"""
from __future__ import annotations

import torch

from llmkit.longctx.memory import MemoryLM, append_tokens
from llmkit.model import CausalLM


class BlockMemory:
    """One layer's evicted tokens as blocks with representative keys; retrieves the top-k blocks."""

    def __init__(self, block_size: int = 32, n_repr: int = 4, topk: int = 4):
        if not 0 < n_repr <= block_size or topk < 1:
            raise ValueError(f"need 0 < n_repr <= block_size and topk >= 1; got {n_repr}, {block_size}, {topk}")
        self.block_size, self.n_repr, self.topk = block_size, n_repr, topk
        self.blocks: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # k, v (B, Hkv, nb, bs, D); repr
        self.pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # k, v, score of a partial block

    @property
    def n_blocks(self) -> int:
        return 0 if self.blocks is None else self.blocks[0].shape[2]

    def add(self, k: torch.Tensor, v: torch.Tensor, score: torch.Tensor) -> None:
        pk, pv, ps = self.pending or (None, None, None)
        k, v, score = append_tokens(pk, k), append_tokens(pv, v), append_tokens(ps, score)
        full = k.shape[2] // self.block_size * self.block_size
        self.pending = (k[:, :, full:], v[:, :, full:], score[:, :, full:]) if k.shape[2] > full else None
        if not full:
            return
        b, h, _, d = k.shape
        bk = k[:, :, :full].reshape(b, h, -1, self.block_size, d)  # (B, Hkv, nb, bs, D)
        bv = v[:, :, :full].reshape(b, h, -1, self.block_size, v.shape[-1])
        top = score[:, :, :full].reshape(b, h, -1, self.block_size).topk(self.n_repr, dim=-1).indices
        rep = bk.gather(3, top[..., None].expand(-1, -1, -1, -1, d))  # (B, Hkv, nb, n_repr, D)
        if self.blocks is None:
            self.blocks = (bk, bv, rep)
        else:
            self.blocks = tuple(torch.cat([old, new], dim=2) for old, new in zip(self.blocks, (bk, bv, rep)))

    def retrieve(self, q: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        keys, values = [], []
        if self.blocks is not None:
            bk, bv, rep = self.blocks
            relevance = torch.einsum("bhd,bhnrd->bhn", q.float().mean(dim=(2, 3)), rep.float())  # (B, Hkv, nb)
            pick = relevance.topk(min(self.topk, self.n_blocks), dim=-1).indices  # (B, Hkv, k)
            for store, out in ((bk, keys), (bv, values)):
                b, h, _, bs, d = store.shape
                out.append(store.gather(2, pick[..., None, None].expand(-1, -1, -1, bs, d)).reshape(b, h, -1, d))
        if self.pending is not None:
            keys.append(self.pending[0])
            values.append(self.pending[1])
        if not keys:
            return None
        k, v = torch.cat(keys, dim=2), torch.cat(values, dim=2)
        return torch.einsum("bhgqd,bhkd->bhgqk", q.float(), k.float()) * scale, v


def infllm(model: CausalLM, window: int = 512, sinks: int = 4, block_size: int = 32, n_repr: int = 4,
           topk: int = 4, chunk: int = 64) -> MemoryLM:
    """A :class:`MemoryLM` running ``model`` with InfLLM's block memory in every layer.

    Each query attends to ``sinks + topk * block_size + (< block_size) + window + chunk`` keys at most.
    """
    return MemoryLM(model, lambda: BlockMemory(block_size, n_repr, topk), window, sinks, chunk)
