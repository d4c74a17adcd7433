"""IA3: learned per-channel rescaling of keys, values and the feed-forward input.

(IA)^3 (Liu et al. 2022, arXiv:2205.05638) learns one vector per targeted
layer: attention keys and values are multiplied element-wise by l_k, l_v, and
the input of the MLP's down projection by l_ff. With ones at init the model is
unchanged; the update is a diagonal matrix, so merging is a row (or column)
scaling of W and needs no extra memory at inference.

It falls out of the LoRA machinery: the same ``base_layer`` wrapper, merge and
unmerge. The vector keeps peft's name and shape (``ia3_l``: (out, 1) for an
output scaling, (1, in) for a feed-forward input scaling) so the peft file
format is a plain prefix away (see ``format.py``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from llmkit.peft.base import (Adapter, freeze_all_but_adapters, match_targets, module_device, name_matches,
                              replace_module)
from llmkit.peft.lora import float_weight
from llmkit.quant.linear import QuantLinear


class IA3Linear(Adapter):
    """Scale the output (``feedforward=False``) or the input (``feedforward=True``) of a linear layer."""

    def __init__(self, base_layer: nn.Module, feedforward: bool = False):
        super().__init__()
        self.base_layer, self.feedforward = base_layer, feedforward
        shape = (1, base_layer.in_features) if feedforward else (base_layer.out_features, 1)
        self.ia3_l = nn.Parameter(torch.ones(shape, device=module_device(base_layer)))
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self.merged or not self.enabled:
            return self.base_layer(x)
        scale = self.ia3_l.flatten()
        if self.feedforward:
            return self.base_layer((x * scale).to(x.dtype))
        result = self.base_layer(x)
        return (result * scale).to(result.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the scaling into ``base_layer`` (weight rows and bias, or weight columns)."""
        if not self.merged:
            self._rescale(self.ia3_l)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self._rescale(1.0 / self.ia3_l)
            self.merged = False

    def _rescale(self, factor: torch.Tensor) -> None:
        w = float_weight(self.base_layer, "merge")
        w.mul_(factor.to(w.dtype))  # (out, 1) scales rows, (1, in) scales columns
        if not self.feedforward and self.base_layer.bias is not None:
            self.base_layer.bias.mul_(factor.flatten().to(w.dtype))


def apply_ia3(model: nn.Module, target_modules: Sequence[str] | str = ("k_proj", "v_proj", "down_proj"),
              feedforward_modules: Sequence[str] | str = ("down_proj",)) -> nn.Module:
    """Wrap the targeted linears in :class:`IA3Linear` and freeze everything else (peft's LLaMA defaults).

    Args:
        model: any module tree.
        target_modules: names or one full-path regex (peft's matching rules).
        feedforward_modules: the subset whose *input* is scaled; the rest have their output scaled.
    Returns:
        ``model``, modified in place.
    """
    for path in match_targets(model, target_modules, (nn.Linear, QuantLinear)):
        module = model.get_submodule(path)
        replace_module(model, path, IA3Linear(module, name_matches(path, feedforward_modules)))
    freeze_all_but_adapters(model)
    return model
