"""Ring attention (Liu et al. 2023, "Ring Attention with Blockwise Transformers for Near-Infinite Context").

The sequence is split into P contiguous chunks, one per rank. Each rank keeps
its queries and passes its keys and values around a ring: at step s it holds
the K/V chunk of rank ``r - s`` and folds that block's attention into its
running output with the log-sum-exp merge of online softmax (as in
FlashAttention). No rank ever
holds more than two K/V chunks or one (T/P x T/P) score block, so activation
memory per rank falls as 1/P. Causal masking skips the blocks of later
ranks entirely and masks the diagonal block.

Backward is a second ring: each rank recomputes its score blocks from the
saved log-sum-exp, accumulates dQ locally, and sends each block's partial
dK/dV along with the K/V they belong to; after P hops they are home. Grouped
K/V heads (GQA) travel unexpanded. Communication is ``torch.distributed``
point-to-point (gloo on CPU, NCCL on GPUs); the blocks are computed in
float32 with plain matmuls and the transfers are not overlapped with
compute, so this is a reference implementation, not a fused kernel.
Contiguous chunks leave causal work unbalanced (rank P-1 does P blocks,
rank 0 one); a zig-zag layout would even it out.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def _ring_pass(tensors: list[torch.Tensor], group) -> list[torch.Tensor]:
    """Send ``tensors`` to the next rank of the ring (as one flat buffer); return those from the previous rank."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    flat = torch.cat([t.reshape(-1) for t in tensors])
    received = torch.empty_like(flat)
    ops = [dist.P2POp(dist.isend, flat, dist.get_global_rank(group, (rank + 1) % world), group),
           dist.P2POp(dist.irecv, received, dist.get_global_rank(group, (rank - 1) % world), group)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return [piece.view_as(t) for piece, t in zip(received.split([t.numel() for t in tensors]), tensors)]


def _scores(q: torch.Tensor, k: torch.Tensor, scale: float, diagonal: bool) -> torch.Tensor:
    """(B, Hkv, G, Tq, D) x (B, Hkv, Tk, D) -> (B, Hkv, G, Tq, Tk) float32 scores; causal within the diagonal block."""
    s = torch.einsum("bhgqd,bhkd->bhgqk", q.float(), k.float()) * scale
    if diagonal:
        t = s.shape[-1]
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    return s


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, causal, group):
        b, h, t, d = q.shape
        hkv = k.shape[1]
        qg = q.view(b, hkv, h // hkv, t, d)  # (B, Hkv, G, T, D): each K/V head's query group
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        out = torch.zeros(b, hkv, h // hkv, t, v.shape[-1], dtype=torch.float32, device=q.device)
        lse = torch.full((b, hkv, h // hkv, t), float("-inf"), device=q.device)
        kc, vc = k, v
        for step in range(world):
            src = (rank - step) % world
            if not causal or src <= rank:
                s = _scores(qg, kc, scale, causal and src == rank)
                block_lse = s.logsumexp(dim=-1)
                new_lse = torch.logaddexp(lse, block_lse)
                out = (out * (lse - new_lse).exp()[..., None]
                       + torch.einsum("bhgqk,bhkd->bhgqd", (s - new_lse[..., None]).exp(), vc.float()))
                lse = new_lse
            if step < world - 1:
                kc, vc = _ring_pass([kc, vc], group)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.causal, ctx.group = scale, causal, group
        return out.view(b, h, t, -1).to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        scale, causal, group = ctx.scale, ctx.causal, ctx.group
        b, h, t, d = q.shape
        hkv = k.shape[1]
        qg = q.view(b, hkv, h // hkv, t, d).float()
        do = grad_out.reshape(out.shape).float()
        delta = (do * out).sum(-1)  # (B, Hkv, G, T): rowsum(dO * O)
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        dq = torch.zeros_like(qg)
        kc, vc = k.float(), v.float()
        dk, dv = torch.zeros_like(kc), torch.zeros_like(vc)  # travel with the K/V block they belong to
        for step in range(world):
            src = (rank - step) % world
            if not causal or src <= rank:
                p = (_scores(qg, kc, scale, causal and src == rank) - lse[..., None]).exp()
                dv = dv + torch.einsum("bhgqk,bhgqd->bhkd", p, do)
                ds = p * (torch.einsum("bhgqd,bhkd->bhgqk", do, vc) - delta[..., None])
                dq = dq + torch.einsum("bhgqk,bhkd->bhgqd", ds, kc) * scale
                dk = dk + torch.einsum("bhgqk,bhgqd->bhkd", ds, qg) * scale
            if step < world - 1:
                kc, vc, dk, dv = _ring_pass([kc, vc, dk, dv], group)
        dk, dv = _ring_pass([dk, dv], group)  # the last hop brings each rank its own block's gradients
        return dq.view(b, h, t, d).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                   scale: float | None = None, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Attention over a sequence split across the ranks of ``group``, this rank holding one contiguous chunk.

    Args:
        q: (B, H, T/P, D) this rank's queries (rank r holds tokens r*T/P .. (r+1)*T/P - 1).
        k: (B, Hkv, T/P, D) its keys; H must be a multiple of Hkv.
        v: (B, Hkv, T/P, Dv) its values.
        causal: mask later tokens (across chunks as well as within).
        scale: score multiplier, default D ** -0.5.
        group: the process group the sequence is split over (default: the world).
    Returns:
        (B, H, T/P, Dv): this chunk's rows of softmax(q k^T * scale) v over the whole sequence;
        differentiable in q, k and v.
    """
    if q.shape[1] % k.shape[1] or k.shape[:3] != v.shape[:3] or q.shape[2] != k.shape[2]:
        raise ValueError(f"bad shapes q={tuple(q.shape)} k={tuple(k.shape)} v={tuple(v.shape)}: need (B, H, T, D) "
                         "with H a multiple of k's heads and equal chunk lengths")
    group = group or dist.group.WORLD
    return _RingAttention.apply(q, k, v, q.shape[-1] ** -0.5 if scale is None else scale, causal, group)
