"""``torch.compile`` for the decode step, with a fallback to eager execution.

Decoding one token is a few hundred small kernels whose launch overhead (and
Python's) dominates a small model's step; compiling fuses them, and on CUDA
``mode="reduce-overhead"`` replays the whole step as one CUDA graph (the
gpt-fast recipe). CUDA graphs do not exist on CPU, where the default mode is
used (inductor's C++/OpenMP kernels), with batch-1 linear layers rewritten
as multiply-and-sum reductions (:mod:`llmkit.generate.rowwise`) that inductor
turns into bandwidth-bound loops, about 2.7x faster than torch's CPU GEMM for
one row.

Compilation happens lazily on the first call and can fail for reasons that
are not the caller's (no C++ compiler, an unsupported op on some backend), so
the first call is guarded: on failure a warning is issued and the plain
function is used from then on. Later errors propagate, since they come from
running the step rather than compiling it. Shapes are static (``dynamic=False``):
the decode loop keeps the batch and cache sizes fixed for a whole generation.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from llmkit.generate.rowwise import rowwise


def compile_step(fn: Callable[..., Any], device: torch.device, enabled: bool = True) -> Callable[..., Any]:
    """``fn`` compiled for ``device`` (or ``fn`` itself when ``enabled`` is False).

    Args:
        fn: the step function; must trace without graph breaks.
        device: where it runs; CUDA gets CUDA graphs.
        enabled: compile at all.
    Returns:
        A callable with ``fn``'s signature.
    """
    if not enabled:
        return fn
    cuda = device.type == "cuda"
    traced = fn if cuda else rowwise(fn)
    compiled = torch.compile(traced, fullgraph=True, dynamic=False, mode="reduce-overhead" if cuda else None)
    return _Guarded(fn, compiled, cuda)


class _Guarded:
    """Calls the compiled function, falling back to ``eager`` if its first call fails to compile."""

    def __init__(self, eager: Callable[..., Any], compiled: Callable[..., Any], cuda_graphs: bool):
        self.eager, self.compiled, self.cuda_graphs = eager, compiled, cuda_graphs
        self.first = True

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            return self.eager(*args)
        if self.cuda_graphs:  # tells the CUDA-graph runtime the previous step's outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        if not self.first:
            return _detach(self.compiled(*args), self.cuda_graphs)
        try:
            out = self.compiled(*args)
        except Exception as e:  # noqa: BLE001 - any compiler failure means "run eagerly"
            warnings.warn(f"torch.compile of the decode step failed ({type(e).__name__}: {e}); decoding eagerly",
                          RuntimeWarning, stacklevel=2)
            self.compiled = None
            return self.eager(*args)
        self.first = False
        return _detach(out, self.cuda_graphs)


def _detach(out: torch.Tensor, cuda_graphs: bool) -> torch.Tensor:
    """CUDA-graph outputs live in a static buffer that the next replay overwrites: copy them out."""
    return out.clone() if cuda_graphs else out
