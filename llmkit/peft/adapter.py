"""Bottleneck adapters (Houlsby et al. 2019, arXiv:1902.00751; Pfeiffer et al. 2020, arXiv:2005.00247).

A small residual MLP h -> h + W_up act(W_down h) inserted after a sub-layer's
output projection: Houlsby places one after attention and one after the
feed-forward block, Pfeiffer only after the feed-forward block (about half the
parameters and compute, comparable quality in the paper's study). W_up starts
at zero, so a fresh adapter is exactly the identity.

Placement by wrapping: the adapter wraps the sub-layer's last linear
(``o_proj`` and ``down_proj`` in HF LLaMA naming), keeping it as
``base_layer``, so its output is adapted before the block's residual add,
which is where the papers put it. The adapter acts on each token's hidden state
alone, so KV caching, padding masks and positions are unaffected. Unlike LoRA
it is non-linear and cannot be merged into the base weights. Houlsby also
trains the layer norms; here only the adapters train (``freeze_all_but_adapters``),
which is the Pfeiffer setting.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from llmkit.model.activation import get_activation
from llmkit.peft.base import Adapter, freeze_all_but_adapters, match_targets, module_device, replace_module
from llmkit.quant.linear import QuantLinear

BottleneckKind = Literal["houlsby", "pfeiffer"]


class BottleneckAdapter(Adapter):
    """``base_layer(x) + up(act(down(base_layer(x))))`` with ``up`` zero-initialised.

    Args:
        base_layer: a linear-like layer (its ``out_features`` is the adapted width).
        size: bottleneck width.
        activation: name from ``llmkit.model.activation``.
    """

    def __init__(self, base_layer: nn.Module, size: int = 64, activation: str = "relu"):
        super().__init__()
        dim, device = base_layer.out_features, module_device(base_layer)
        self.base_layer = base_layer
        self.activation = activation
        self.adapter_down = nn.Linear(dim, size, device=device)
        self.adapter_up = nn.Linear(size, dim, device=device)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        h = self.base_layer(x)
        if not self.enabled:
            return h
        z = self.adapter_up(get_activation(self.activation)(self.adapter_down(h.to(self.adapter_down.weight.dtype))))
        return h + z.to(h.dtype)


def apply_bottleneck(model: nn.Module, kind: BottleneckKind = "houlsby", size: int = 64, activation: str = "relu",
                     attn_output: str = "o_proj", mlp_output: str = "down_proj") -> nn.Module:
    """Insert bottleneck adapters in place and freeze everything else.

    Args:
        model: any module tree with named sub-layer output projections.
        kind: "houlsby" (after attention and after the MLP) or "pfeiffer" (after the MLP only).
        size: bottleneck width.
        activation: non-linearity between the projections.
        attn_output: name of the attention output projection.
        mlp_output: name of the MLP output projection.
    Returns:
        ``model``.
    """
    targets = {"houlsby": [attn_output, mlp_output], "pfeiffer": [mlp_output]}[kind]
    for path in match_targets(model, targets, (nn.Linear, QuantLinear)):
        replace_module(model, path, BottleneckAdapter(model.get_submodule(path), size, activation))
    freeze_all_but_adapters(model)
    return model
