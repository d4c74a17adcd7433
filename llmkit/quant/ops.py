"""The matmul C++ operators (quantised, and dense for a few rows): built once per machine, then given
what the compiler needs.

One library from ``csrc/``, in the ``llmkit`` operator namespace:

- ``gguf_ops.cpp``: ``gguf_dequantize`` and ``gguf_mm``, llama.cpp's block layouts
  (:mod:`llmkit.quant.gguf_ops` wraps them);
- ``int8_mm.cpp``: ``int8_mm(x, weight, scales, int8_activations)``, the CPU product of
  :class:`~llmkit.quant.linear.Int8Linear` (per-channel int8 weights, exact fp32 products or
  llama.cpp's int8-rounded activations on VNNI);
- ``few_rows_mm.cpp``: ``few_rows_mm(x, weight, bias)``, ``F.linear`` for at most 16 rows of fp32
  or bf16 that streams the weight once (decode steps: :mod:`llmkit.generate.rowwise` routes
  compiled steps' few-row linears to it).

They are compiled on first use, as the decode-attention kernel is
(:mod:`llmkit.generate.decode_attention`: ``-march=native``, cached by torch under
``~/.cache/torch_extensions``), and each gets a fake (meta) implementation so
``torch.compile`` traces through it as one opaque call. When the build fails (no
compiler, no ninja, no OpenMP) :func:`load` warns once and returns False, and the
layers compute the same numbers with torch ops instead.
"""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path

import torch

from llmkit.native import build as build_library

CSRC = Path(__file__).with_name("csrc")
SOURCES = [CSRC / name for name in ("gguf_ops.cpp", "int8_mm.cpp", "few_rows_mm.cpp")]
HEADERS = [CSRC / "q8_block.h"]  # torch rebuilds when a source changes, not a header: they go into the name
# read by native() while compiling instead of calling load(), which dynamo cannot trace (it builds C++)
_STATE = {"ready": False}
# what the wrapper modules register once the library is loaded (gguf_ops: its fakes and autograd formula)
_ON_LOAD: list[Callable[[], None]] = []


def on_load(register: Callable[[], None]) -> None:
    """Run ``register`` once the operators are loaded: now if they are, else when :func:`load` succeeds."""
    if _STATE["ready"]:
        register()
    else:
        _ON_LOAD.append(register)


@functools.cache
def load() -> bool:
    """Build (once per machine) and load the operators; False, with a warning, if that fails."""
    headers = hashlib.sha1(b"".join(h.read_bytes() for h in HEADERS)).hexdigest()[:8]
    if not build_library("llmkit_quant_ops", SOURCES, ["-O3", "-march=native", "-fopenmp"],
                         "the quantised-matmul kernels", "GGUF and int8 layers compute with torch ops instead", headers):
        return False
    torch.library.register_fake("llmkit::int8_mm")(_int8_mm_shape)
    torch.library.register_fake("llmkit::few_rows_mm")(_few_rows_mm_shape)
    _STATE["ready"] = True
    for register in _ON_LOAD:
        register()
    return True


def native(t: torch.Tensor) -> bool:
    """Whether the C++ operators apply to ``t``: a CPU tensor, and the library built (tried once, outside tracing)."""
    if t.device.type != "cpu":
        return False
    return _STATE["ready"] if torch.compiler.is_compiling() else load()


def _int8_mm_shape(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor,
                   int8_activations: bool) -> torch.Tensor:
    torch._check(x.shape[-1] == weight.shape[1])
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _few_rows_mm_shape(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    torch._check(x.shape[-1] == weight.shape[1])
    return x.new_empty(*x.shape[:-1], weight.shape[0])
