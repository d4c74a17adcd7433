"""``torch.compile`` for the decode step, with a fallback to eager execution.

Decoding one token is a few hundred small kernels whose launch overhead (and
Python's) dominates a small model's step; compiling fuses them, and on CUDA
``mode="reduce-overhead"`` replays the whole step as one CUDA graph (the
gpt-fast recipe). CUDA graphs do not exist on CPU, where the default mode is
used (inductor's C++/OpenMP kernels), with two substitutions made while
tracing: batch-1 linear layers become multiply-and-sum reductions
(:mod:`llmkit.generate.rowwise`) that inductor turns into bandwidth-bound
loops, about 2.7x faster than torch's CPU GEMM for one row, and decode
attention runs a flash-decoding C++ kernel
(:mod:`llmkit.generate.decode_attention`), about 3x faster than torch's.

Compilation happens lazily on the first call and can fail for reasons that
are not the caller's (no C++ compiler, an unsupported op on some backend), so
the first call is guarded: on failure a warning is issued and the plain
function is used from then on. Later errors propagate, since they come from
running the step rather than compiling it. Shapes are static (``dynamic=False``):
the decode loop keeps the batch and cache sizes fixed for a whole generation.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any

import torch

from llmkit.generate import decode_attention
from llmkit.generate.rowwise import RowwiseLinear
from llmkit.quant import ops as quant_ops


# inductor's wrapper checks the size, stride and alignment of every input on every call (a few
# hundred parameters, ~0.3 ms of a SmolLM2 step); the first call's guards have checked them. The
# wrapper itself is C++ (cpp_wrapper) rather than Python: a SmolLM2 bf16 batch-1 step ran 1.08x faster
# (median of 12 alternating generations, faster in all 12) for a first compile 1.2x longer (80 vs 65 s)
CPU_OPTIONS = {"size_asserts": False, "alignment_asserts": False, "cpp_wrapper": True}
# graphs one step function may hold: each model, dtype, batch bucket (the engine's) and cache shape compiles
# its own, all under the step's one code object; dynamo's default of 8 makes a long-lived process (a
# server, a test run) fall back to eager decoding after the eighth
RECOMPILE_LIMIT = 64
# torch >= 2.7; checked once here rather than on every step
CAN_SKIP_GUARDS = "skip_guard_eval_unsafe" in inspect.signature(torch.compiler.set_stance).parameters


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
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    cuda = device.type == "cuda"
    if cuda:
        compiled = torch.compile(fn, fullgraph=True, dynamic=False, mode="reduce-overhead")
    else:
        compiled = torch.compile(_cpu_rewrites(fn), fullgraph=True, dynamic=False, options=CPU_OPTIONS)
    return _Guarded(fn, compiled, cuda)


def _cpu_rewrites(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with the CPU decode substitutions active (the attention kernel only if it builds)."""
    kernel = decode_attention.load()
    quant_ops.load()  # the few-rows matmul kernel of RowwiseLinear; built here, outside tracing

    @functools.wraps(fn)
    def wrapped(*args: Any) -> Any:
        with contextlib.ExitStack() as modes:
            modes.enter_context(RowwiseLinear())
            if kernel:
                modes.enter_context(decode_attention.DecodeAttention())
            return fn(*args)

    return wrapped


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
            with _skip_guards():
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


def _skip_guards() -> contextlib.AbstractContextManager:
    """Dynamo without guard evaluation, for calls known to hit the graph compiled by the first one.

    Evaluating the guards (a few hundred parameter tensors) took about 1 ms of a 13 ms SmolLM2
    bf16 decode step. A generation passes the same objects and shapes to every step, so after
    its first call the guards would always pass. When other models have compiled the same step,
    dynamo still evaluates the guards that tell their graphs apart.
    """
    if not CAN_SKIP_GUARDS:
        return contextlib.nullcontext()
    return torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)


def _detach(out: torch.Tensor, cuda_graphs: bool) -> torch.Tensor:
    """CUDA-graph outputs live in a static buffer that the next replay overwrites: copy them out."""
    return out.clone() if cuda_graphs else out
