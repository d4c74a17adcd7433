"""GPTQ (Frantar et al. 2023, arXiv:2210.17323): quantise a weight column by column, correcting the rest.

Round-to-nearest quantises each weight independently. GPTQ instead minimises
the layer's output error ||X W^T - X Q^T||^2 over the calibration inputs X
(rows = tokens). That error's Hessian w.r.t. a row of W is H = 2 X^T X, the
same for every output row, so one pass over the columns does all rows at once
(Optimal Brain Quantisation with a fixed column order): quantise column i,
then spread its error over the not-yet-quantised columns,
W[:, j>i] -= (w_i - q_i) / Hinv[i, i] * Hinv[i, j>i], with Hinv the Cholesky
factor (upper) of H^-1, which the paper shows gives the sequential updates.

The paper's engineering, all here:
- 1% dampening: H += 0.01 * mean(diag H) * I keeps the inverse stable;
- dead inputs (diag H = 0) are zeroed and their diagonal set to 1;
- lazy batches: updates are applied within a block of 128 columns and pushed
  to the columns after the block once per block (a matmul instead of 128 rank-1 updates);
- act-order: columns in order of decreasing diag(H) (largest activations first);
- static groups: with act-order, each group's scale and zero point are fixed
  from the original weight before the loop, so groups stay contiguous in the
  original column order and the result packs into the standard int4 layout
  (the reference code's ``static_groups``). Without act-order, a group's
  parameters come from its columns as they stand (error-corrected) when the
  loop reaches it, as in the paper.
"""
from __future__ import annotations

import torch

from llmkit.quant.primitives import affine_params, int_range


def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2 X^T X / n for inputs x (n, in): (in, in) float32 (the 1/n keeps the damping scale-free)."""
    x = x.float()
    return 2 * x.T @ x / x.shape[0]


@torch.no_grad()
def gptq_quantize(w: torch.Tensor, h: torch.Tensor, bits: int = 4, group_size: int = 64, damp: float = 0.01,
                  block_size: int = 128, act_order: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ codes of a weight, asymmetric per group.

    Args:
        w: (out, in) weight.
        h: (in, in) Hessian of the layer's inputs (:func:`hessian`).
        bits: code width (2 to 8; the int4 container holds up to 4).
        group_size: input columns sharing a scale and zero point; must divide in.
        damp: dampening as a fraction of the mean diagonal.
        block_size: columns per lazy batch.
        act_order: process columns by decreasing diag(H) (with static groups).
    Returns:
        codes (out, in) uint8 in [0, 2^bits - 1], scale and zero (out, in / group_size) float32,
        so that w ~= (codes - zero) * scale per group.
    """
    out_f, in_f = w.shape
    if in_f % group_size:
        raise ValueError(f"group_size={group_size} does not divide in_features={in_f}")
    _, qmax = int_range(bits, symmetric=False)
    w = w.detach().float().clone()
    h = h.detach().float().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    n_groups = in_f // group_size
    scale = torch.zeros(out_f, n_groups)
    zero = torch.zeros(out_f, n_groups)
    if act_order:  # static groups: parameters of the original weight's groups
        s, z = affine_params(w, bits, symmetric=False, group_size=group_size)
        scale.copy_(s), zero.copy_(z)
        perm = torch.argsort(h.diagonal(), descending=True)
    else:
        perm = torch.arange(in_f)
    w, h = w[:, perm], h[perm][:, perm]
    h.diagonal().add_(damp * h.diagonal().mean())
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    codes = torch.zeros(out_f, in_f, dtype=torch.uint8)
    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        w1, err1, hinv1 = w[:, i1:i2].clone(), torch.zeros(out_f, i2 - i1), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            group = int(perm[col]) // group_size
            if not act_order and col % group_size == 0:  # first column of a group: fit it as it stands now
                ahead = torch.cat([w1[:, i:], w[:, i2:]], dim=1)[:, :group_size]
                s, z = affine_params(ahead, bits, symmetric=False, group_size=None)  # per row: (out, 1)
                scale[:, group], zero[:, group] = s[:, 0], z[:, 0]
            q = (w1[:, i] / scale[:, group] + zero[:, group]).round().clamp(0, qmax)
            codes[:, col] = q.to(torch.uint8)
            e = (w1[:, i] - (q - zero[:, group]) * scale[:, group]) / hinv1[i, i]
            w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return codes[:, torch.argsort(perm)], scale, zero
