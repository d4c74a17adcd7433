"""AWQ (Lin et al. 2024, arXiv:2306.00978): activation-aware per-channel scales, then int4 per group.

A small fraction of a weight's input channels meet large activations, and
rounding errors there cost the most. Multiplying those weight columns by
s > 1 before quantising (and dividing the input by s) shrinks their relative
rounding error; too large an s coarsens the group's scale for everyone else.
AWQ searches s = s_x^a, with s_x the mean |activation| per input channel, over a
grid of 20 values of a in [0, 1), keeping the one with the smallest output error
||Q(W diag(s)) (X / s) - W X|| on calibration inputs. a = 0 is s = 1, plain
round-to-nearest, so the search never does worse than RTN on that data.
Each s is normalised by sqrt(max * min) as in the reference code.

Then a clipping search: for each (output row, group), shrink the quantisation
range by 1 - i/20, i < 10, and keep the factor with the smallest error of that
group's contribution to the output (the reference's ``auto_clip``).

AWQ measures the error on the output of the module that consumes the shared
input (all of q/k/v together, say) and folds 1/s into the previous layer. Here
each linear gets its own s, kept as its ``smooth`` vector (no knowledge of the
model graph needed), so "the block" whose output error is minimised is the
linear itself.
"""
from __future__ import annotations

import torch

from llmkit.quant.primitives import fake_quantize

GRID = 20
MAX_SHRINK = 0.5  # clipping keeps at least half the range
ROWS = 256  # calibration rows the searches evaluate (evenly spaced): the cost is rows * in * out per candidate


def _rows(x: torch.Tensor, n: int = ROWS) -> torch.Tensor:
    """At most ``n`` evenly spaced rows of ``x``, float32."""
    step = max(1, x.shape[0] // n)
    return x[::step][:n].float()


def _rtn(w: torch.Tensor, group_size: int, clip: torch.Tensor | float = 1.0) -> torch.Tensor:
    return fake_quantize(w, 4, symmetric=False, group_size=group_size, clip=clip)


@torch.no_grad()
def search_scale(w: torch.Tensor, x: torch.Tensor, group_size: int, grid: int = GRID
                 ) -> tuple[torch.Tensor, list[float]]:
    """The activation-aware scale of a weight.

    Args:
        w: (out, in) weight.
        x: (n, in) calibration inputs of this layer.
        group_size: int4 group.
        grid: number of exponents a = i / grid tried.
    Returns:
        s (in,) float32 and the output error (mean squared) of every candidate, errors[0] being s = 1.
    """
    w, x = w.float(), _rows(x)
    ref = x @ w.T
    s_x = x.abs().mean(dim=0)
    best, errors = torch.ones_like(s_x), []
    for i in range(grid):
        s = s_x.pow(i / grid).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        err = ((x / s) @ _rtn(w * s, group_size).T - ref).pow(2).mean().item()
        if not errors or err < min(errors):
            best = s
        errors.append(err)
    return best, errors


@torch.no_grad()
def search_clip(w: torch.Tensor, x: torch.Tensor, group_size: int, grid: int = GRID) -> torch.Tensor:
    """Per-(row, group) range factors minimising each group's output error: (out * in / group_size,).

    ``w`` and ``x`` are the already scaled weight and input; the factor order matches
    :func:`~llmkit.quant.primitives.affine_params`' groups.
    """
    w, x = w.float(), _rows(x, ROWS // 2)
    out_f, in_f = w.shape
    xg = x.view(x.shape[0], in_f // group_size, group_size)  # (n, G, g)
    best_err = torch.full((out_f, in_f // group_size), float("inf"))
    best = torch.ones(out_f, in_f // group_size)
    for i in range(int(MAX_SHRINK * grid)):
        ratio = 1 - i / grid
        diff = (_rtn(w, group_size, ratio) - w).view(out_f, -1, group_size)  # (out, G, g)
        err = torch.einsum("ngk,ogk->nog", xg, diff).pow(2).mean(dim=0)  # (out, G)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, ratio), best)
    return best.reshape(-1)
