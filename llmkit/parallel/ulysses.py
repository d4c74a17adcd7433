"""DeepSpeed-Ulysses sequence parallelism (Jacobs et al. 2023): all-to-all from sequence shards to head shards.

Each of P ranks holds a contiguous chunk of the sequence for all heads. One
all-to-all turns that into the whole sequence for H/P heads, attention runs
locally per head (any implementation: here llmkit's :func:`attend`), and a
second all-to-all turns the output back into sequence chunks. Attention
itself is untouched, so it is exact and stays a fused kernel; the price is
that P must divide the number of heads (K/V heads fewer than P are repeated
up to the query heads), and per-rank memory falls as 1/P for everything but
the (T x T) scores of the H/P local heads, which a fused kernel never
materialises. The all-to-all is linear, so its backward is the inverse
all-to-all.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from llmkit.model.attention import attend


def _all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    """Exchange x's leading dim of size P: slice p goes to rank p; slice p of the result came from rank p."""
    x = x.contiguous()
    out = torch.empty_like(x)  # after .contiguous(): empty_like keeps a strided input's layout
    dist.all_to_all_single(out, x, group=group)
    return out


def _seq_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    """(B, H, T/P, D) sequence chunk, all heads -> (B, H/P, T, D) whole sequence, this rank's heads."""
    p = dist.get_world_size(group)
    b, h, t, d = x.shape
    y = _all_to_all(x.view(b, p, h // p, t, d).transpose(0, 1), group)  # (P = sequence chunk, B, H/P, T/P, D)
    return y.permute(1, 2, 0, 3, 4).reshape(b, h // p, p * t, d)


def _heads_to_seq(x: torch.Tensor, group) -> torch.Tensor:
    """Inverse of :func:`_seq_to_heads`: (B, H/P, T, D) -> (B, H, T/P, D)."""
    p = dist.get_world_size(group)
    b, hp, t, d = x.shape
    y = _all_to_all(x.view(b, hp, p, t // p, d).permute(2, 0, 1, 3, 4), group)  # (P = head chunk, B, H/P, T/P, D)
    return y.transpose(0, 1).reshape(b, p * hp, t // p, d)


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _seq_to_heads(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _heads_to_seq(grad, ctx.group), None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _heads_to_seq(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _seq_to_heads(grad, ctx.group), None


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                      scale: float | None = None, group: dist.ProcessGroup | None = None,
                      impl: str = "sdpa") -> torch.Tensor:
    """Attention over a sequence split across the ranks of ``group`` (contiguous chunks, rank order).

    Args:
        q: (B, H, T/P, D) this rank's queries; P must divide H.
        k: (B, Hkv, T/P, D) keys; repeated up to H heads when P does not divide Hkv.
        v: (B, Hkv, T/P, Dv) values.
        causal: mask later tokens.
        scale: score multiplier, default D ** -0.5.
        group: the process group (default: the world).
        impl: the local attention, "sdpa" or "eager" (see :func:`llmkit.model.attention.attend`).
    Returns:
        (B, H, T/P, Dv) this chunk's attention output, differentiable in q, k and v.
    """
    group = group or dist.group.WORLD
    p = dist.get_world_size(group)
    h, hkv = q.shape[1], k.shape[1]
    if h % p or h % hkv:
        raise ValueError(f"Ulysses needs the world size ({p}) to divide the {h} query heads, "
                         f"and {hkv} K/V heads to divide them")
    if hkv % p:
        k, v = k.repeat_interleave(h // hkv, dim=1), v.repeat_interleave(h // hkv, dim=1)
    q, k, v = (_SeqToHeads.apply(x, group) for x in (q, k, v))
    t = q.shape[2]
    mask = None if causal else torch.ones(1, 1, t, t, dtype=torch.bool, device=q.device)
    out = attend(q, k, v, mask, q.shape[-1] ** -0.5 if scale is None else scale, impl)
    return _HeadsToSeq.apply(out, group)
