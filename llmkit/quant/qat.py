"""Quantisation-aware training: train through the rounding, then convert to the real scheme.

Post-training rounding moves every weight by up to half a step, and the model
never had the chance to compensate. QAT (Jacob et al. 2018, arXiv:1712.05877;
torchao's ``Int4WeightOnlyQATQuantizer``) runs the forward pass with the weight
*fake-quantised*, i.e. rounded to the scheme's grid and back to float, so the
loss sees the quantised model, while the gradient flows to the float weight as
if rounding were the identity: the straight-through estimator (Bengio et al.
2013), w_fq = w + (q(w) - w).detach().

:class:`FakeQuantLinear` is an ``nn.Linear`` (a subclass rather than a wrapper,
unlike the house rule for adapters, so that parameter names, checkpoints,
optimisers and the HF export stay those of the float model during training).
Its grid is exactly the one the real scheme rounds to (``int8``: symmetric per
output channel; ``int4``: asymmetric per group), so :func:`convert_qat` =
restore plain linears + :func:`~llmkit.quant.quantize` reproduces the trained
forward pass up to the kernels' float rounding.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.quant.primitives import fake_quantize
from llmkit.quant.schemes import (DEFAULT_SKIP, QUANT_SCHEMES, check_shapes, quantize, scheme_options, set_module,
                                  targets)

QAT_SCHEMES = ("int8", "int4")


class FakeQuantLinear(nn.Linear):
    """An ``nn.Linear`` whose forward uses its weight rounded to a scheme's grid (straight-through gradient)."""

    bits: int = 8
    group_size: int | None = None  # None: per output channel (int8); g: asymmetric groups of g (int4)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int | None) -> "FakeQuantLinear":
        """A fake-quantised view of ``linear`` sharing its parameters (optimiser state stays valid)."""
        fq = cls.__new__(cls)
        nn.Module.__init__(fq)
        fq.in_features, fq.out_features = linear.in_features, linear.out_features
        fq.weight, fq.bias = linear.weight, linear.bias
        fq.bits, fq.group_size = bits, group_size
        return fq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        q = fake_quantize(w.detach(), self.bits, symmetric=self.group_size is None, group_size=self.group_size)
        return F.linear(x, w + (q - w).detach(), self.bias)

    def to_linear(self) -> nn.Linear:
        """The plain ``nn.Linear`` with the same parameters."""
        linear = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(linear)
        linear.in_features, linear.out_features = self.in_features, self.out_features
        linear.weight, linear.bias = self.weight, self.bias
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}, group_size={self.group_size}"


def prepare_qat(model: nn.Module, scheme: str = "int4", skip: Sequence[str] = DEFAULT_SKIP, **options) -> nn.Module:
    """Make every linear that ``quantize(model, scheme)`` would replace fake-quantised, in place.

    Args:
        model: the float model to train.
        scheme: "int8" or "int4".
        skip: leaf names left alone (as for :func:`~llmkit.quant.quantize`).
        **options: the scheme's options (``group_size`` for int4).
    Returns:
        ``model``, with ``model.qat_config`` recording the scheme for :func:`convert_qat`.
    """
    if scheme not in QAT_SCHEMES:
        raise ValueError(f"QAT supports {', '.join(QAT_SCHEMES)}, not {scheme!r}")
    options = scheme_options(scheme, options)
    paths = targets(model, skip)
    check_shapes(model, paths, QUANT_SCHEMES[scheme], options)  # the real scheme must fit later
    for path in paths:
        set_module(model, path, FakeQuantLinear.from_linear(model.get_submodule(path), 8 if scheme == "int8" else 4,
                                                          options.get("group_size")))
    model.qat_config = {"scheme": scheme, "skip": list(skip), **options}
    return model


@torch.no_grad()
def convert_qat(model: nn.Module) -> nn.Module:
    """Turn a model prepared by :func:`prepare_qat` into the real quantised model, in place."""
    config = dict(getattr(model, "qat_config", None) or {})
    if not config:
        raise ValueError("the model was not prepared for QAT (prepare_qat)")
    for path, module in list(model.named_modules()):
        if isinstance(module, FakeQuantLinear):
            set_module(model, path, module.to_linear())
    del model.qat_config
    return quantize(model, config.pop("scheme"), skip=config.pop("skip"), **config)
