"""Putting LoRA on a model and taking it off: apply, merge, unmerge, merge-and-unload, disable, count.

These work on any ``nn.Module`` tree, not only llmkit's ``CausalLM``: targets are
found by module path (peft's matching rules, see ``base.py``) and replaced in
place by the wrappers of ``lora.py``. ``"all-linear"`` selects every linear
layer (float or 4-bit) except the output head, which is what peft does for
transformers models: a head of size vocab x dim is expensive to adapt and
rarely helps.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from llmkit.peft.base import adapters, freeze_all_but_adapters, inside_adapter, match_targets, replace_module
from llmkit.peft.ia3 import IA3Linear
from llmkit.peft.lora import LORA_INITS, LoRAConv2d, LoRAEmbedding, LoRALayer, LoRALinear
from llmkit.quant.linear import QuantLinear
from llmkit.quant.schemes import mark_float

LINEAR_KINDS = (nn.Linear, QuantLinear)
MERGEABLE = (LoRALayer, IA3Linear)


def _all_linear(model: nn.Module) -> list[str]:
    """Every linear path except adapters' own layers, bases already under LoRA, and the output head."""
    skip = inside_adapter(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [name for name, m in model.named_modules()
            if isinstance(m, LINEAR_KINDS) and name not in skip and m is not head
            and name.rsplit(".", 1)[-1] not in ("lm_head", "base_layer")]


def wrap_lora(module: nn.Module, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False,
              use_dora: bool = False, init: str = "default") -> LoRALayer:
    """The LoRA wrapper for one module, chosen by its type."""
    if isinstance(module, LINEAR_KINDS):
        return LoRALinear(module, r, alpha, dropout, use_rslora, use_dora, init)
    if use_dora or init == "pissa":
        method = "DoRA" if use_dora else "PiSSA init"
        raise ValueError(f"{method} is implemented for linear layers, not {type(module).__name__}")
    if isinstance(module, nn.Embedding):
        return LoRAEmbedding(module, r, alpha, use_rslora)
    if isinstance(module, nn.Conv2d):
        return LoRAConv2d(module, r, alpha, dropout, use_rslora, init)
    raise TypeError(f"no LoRA wrapper for {type(module).__name__}")


def apply_lora(model: nn.Module, target_modules: Sequence[str] | str = ("q_proj", "v_proj"), r: int = 8,
               alpha: float = 16, dropout: float = 0.0, use_rslora: bool = False, use_dora: bool = False,
               init: str = "default") -> nn.Module:
    """Wrap the targeted layers with LoRA in place and freeze every non-adapter parameter.

    Args:
        model: any module tree (``CausalLM``, a transformers model, a CNN ...).
        target_modules: list of names (``["q_proj", "v_proj"]``), one regex matching whole paths,
            or ``"all-linear"``. Linear, 4-bit linear, embedding and Conv2d layers can be targeted.
        r: rank.
        alpha: scale numerator.
        dropout: dropout on the adapter input (not applied on embeddings, as in peft).
        use_rslora: s = alpha / sqrt(r) instead of alpha / r.
        use_dora: weight-decomposed LoRA (linear layers only).
        init: "default" (kaiming-uniform A, B = 0), "gaussian" (A ~ N(0, 1/r)) or "pissa" (linear only).
    Returns:
        ``model``, with only adapter parameters requiring grad.
    """
    if init not in LORA_INITS:
        raise ValueError(f"init={init!r}: choose from {LORA_INITS}")
    if target_modules == "all-linear":
        paths = _all_linear(model)
    else:
        paths = match_targets(model, target_modules, (*LINEAR_KINDS, nn.Embedding, nn.Conv2d),
                              exclude=("base_layer",))
    for path in paths:
        replace_module(model, path, wrap_lora(model.get_submodule(path), r, alpha, dropout, use_rslora,
                                              use_dora, init))
    freeze_all_but_adapters(model)
    return model


def _mergeable(model: nn.Module) -> list[tuple[str, LoRALayer | IA3Linear]]:
    return [(name, a) for name, a in adapters(model) if isinstance(a, MERGEABLE)]


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA/DoRA/IA3 adapter into its base weight, keeping the wrappers (see ``unmerge_lora``)."""
    for _, a in _mergeable(model):
        a.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Subtract merged adapters from the base weights again."""
    for _, a in _mergeable(model):
        a.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every adapter and put the plain base layers back: the result has no adapter code in it.

    A quantised base is dequantised to a float ``nn.Linear`` (in its compute dtype) before the merge,
    since adding a low-rank update to 4- or 8-bit codes and re-quantising would lose most of it.
    Non-mergeable adapters (bottleneck, virtual tokens) raise TypeError.
    """
    for name, a in adapters(model):
        if not isinstance(a, MERGEABLE):
            raise TypeError(f"{name or 'model'}: a {type(a).__name__} cannot be merged into the base weights")
    dequantized = []
    for name, a in _mergeable(model):
        if isinstance(a.base_layer, QuantLinear):
            a.base_layer = a.base_layer.to_linear()
            dequantized.append(name)
        a.merge()
        if not name:
            return a.base_layer
        replace_module(model, name, a.base_layer)
    mark_float(model, dequantized)  # so a save records these layers as float
    return model


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """``with disable_adapters(model):`` runs the base model; merged adapters are unmerged meanwhile."""
    mods = [a for _, a in adapters(model)]
    was_enabled = [a.enabled for a in mods]
    merged = [a for a in mods if getattr(a, "merged", False)]
    for a in merged:
        a.unmerge()
    for a in mods:
        a.enabled = False
    try:
        yield model
    finally:
        for a, state in zip(mods, was_enabled):
            a.enabled = state
        for a in merged:
            a.merge()


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors count once, and a quantised linear counts
    the in * out weights it stores (as buffers) so totals match the unquantised model."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    total += sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, QuantLinear))
    return trainable, total
