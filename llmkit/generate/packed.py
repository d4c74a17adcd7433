"""Linear layers on oneDNN-prepacked weights, for eager inference on the CPU.

``F.linear`` on the CPU runs fp32 through the BLAS GEMM (MKL) and bf16 through
oneDNN, both on the weight's plain row-major layout, which the GEMM repacks
into its blocked panels on every call. oneDNN can hold the weight in that
blocked layout once (``torch.ops.mkldnn._reorder_linear_weight``) and multiply
against it directly (``torch.ops.mkldnn._linear_pointwise``). On a 2-core Zen 4,
120 distinct 576 x 1536 weights (so they stream from memory, as a model's do):
fp32 1.7-2.5x torch's GEMM at 16-64 rows and 1.3-1.6x at 256-2048 (MKL on AMD
runs well below the cores' AVX-512 peak); bf16 1.2-1.5x at 16-64 rows and
1.0-1.1x at 512-2048.

:class:`PackedLinear` packs the weights of a model's ``nn.Linear`` layers
(tied LM heads included, once) when it is created, which costs a second copy
of them, and while it is active (a context manager) those layers' forward runs
on the packed copy. It swaps the layers' ``forward`` for the duration and puts
them back after: a ``TorchFunctionMode`` did the same by intercepting
``F.linear``, but a mode runs Python for every torch call of the forward (some
4,000 in a SmolLM2 step), which cost 7-10 ms of a ~38 ms batch-1 engine step.
A weight changed in place afterwards (its version counter moves) is packed
again on its next use, and a replaced one runs unpacked, so the product never
reads stale weights.
Calls that need gradients, or inputs of another dtype or device, take
``F.linear`` unchanged. Dynamo cannot trace the packed tensors, so it is an
eager-mode tool: the compiled decode steps have :mod:`llmkit.generate.rowwise`
instead.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

# the row count oneDNN picks the blocked layout for; 16-4096 rows all run within ~10% of their own
# best layout with it (measured on Zen 4, fp32 and bf16), where a hint of 1 costs 20-35% at 16-64
ROWS_HINT = 64


def packable(weight: torch.Tensor) -> bool:
    """oneDNN can pack this weight: a 2-D fp32/bf16 CPU tensor, with torch built with oneDNN."""
    return (weight.device.type == "cpu" and weight.dim() == 2 and weight.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available())


class PackedLinear:
    """While active (``with``), ``model``'s ``nn.Linear`` layers multiply by packed copies of their weights.

    Args:
        model: the module whose ``nn.Linear`` layers (every one whose weight :func:`packable` accepts) are
            packed now.
    """

    def __init__(self, model: nn.Module):
        # id(weight) -> (weight, its version when packed, packed copy); holding the weight keeps its id unique
        self.packs: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear) and packable(m.weight)]
        with torch.no_grad():
            for layer in self.layers:
                if id(layer.weight) not in self.packs:
                    self._pack(layer.weight)
        self.saved: list[object] = []  # each layer's own instance ``forward`` (None: the class's) while active

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROWS_HINT)
        self.packs[id(weight)] = (weight, weight._version, packed)
        return packed

    def __enter__(self) -> "PackedLinear":
        # through the instance __dict__: nn.Module's __setattr__/__delattr__ checks cost ~1% of a batch-1 step
        self.saved = [layer.__dict__.get("forward") for layer in self.layers]
        for layer in self.layers:
            layer.__dict__["forward"] = functools.partial(self._forward, layer)
        return self

    def __exit__(self, *exc) -> None:
        for layer, own in zip(self.layers, self.saved):
            if own is None:
                del layer.__dict__["forward"]
            else:
                layer.__dict__["forward"] = own
        self.saved = []

    def _forward(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        weight, bias = layer.weight, layer.bias
        entry = self.packs.get(id(weight))
        if (entry is not None and entry[0] is weight and x.dtype == weight.dtype and x.device.type == "cpu"
                and (bias is None or bias.dtype == x.dtype)
                and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
            packed = entry[2] if entry[1] == weight._version else self._pack(weight)
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")
        return F.linear(x, weight, bias)
