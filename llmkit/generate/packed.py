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

:class:`PackedLinear` makes that substitution while it is active, for the
weights of a model's ``nn.Linear`` layers (tied LM heads included), packed
when it is created: it costs a second copy of those weights. A weight changed
in place afterwards (its version counter moves) or replaced is packed again on
its next use, so the product never reads stale weights. Calls that need
gradients, and other tensors, go to ``F.linear`` unchanged. Dynamo cannot
trace the packed tensors, so it is an eager-mode tool: the compiled decode
steps have :mod:`llmkit.generate.rowwise` instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

# the row count oneDNN picks the blocked layout for; 16-4096 rows all run within ~10% of their own
# best layout with it (measured on Zen 4, fp32 and bf16), where a hint of 1 costs 20-35% at 16-64
ROWS_HINT = 64


def packable(weight: torch.Tensor) -> bool:
    """oneDNN can pack this weight: a 2-D fp32/bf16 CPU tensor, with torch built with oneDNN."""
    return (weight.device.type == "cpu" and weight.dim() == 2 and weight.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available())


class PackedLinear(TorchFunctionMode):
    """While active, ``F.linear`` on one of ``model``'s packed linear weights runs on the packed copy.

    Args:
        model: the module whose ``nn.Linear`` weights (every one that :func:`packable` accepts) are packed now.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        # id(weight) -> (weight, its version when packed, packed copy); holding the weight keeps its id unique
        self.packs: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Linear) and packable(module.weight):
                    self._pack(module.weight)

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROWS_HINT)
        self.packs[id(weight)] = (weight, weight._version, packed)
        return packed

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            entry = self.packs.get(id(weight))
            if (entry is not None and entry[0] is weight and x.dtype == weight.dtype and x.device.type == "cpu"
                    and (bias is None or bias.dtype == x.dtype)
                    and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
                packed = entry[2] if entry[1] == weight._version else self._pack(weight)
                return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")
        return func(*args, **kwargs)
