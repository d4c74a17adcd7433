"""What every adapter shares: the `Adapter` marker, freezing, module swapping and target matching.

Every parameter-efficient method in this package is a module that wraps the
original and keeps it as ``base_layer`` (a layer) or ``base_model`` (a whole
model), following peft's ``lora/layer.py``. That one convention is what the
generic helpers here rely on: an adapter's own parameters are the ones *not*
under ``base_layer.``/``base_model.``, so freezing, counting, disabling and
saving work the same way for LoRA, IA3, bottleneck adapters and virtual tokens.

Target matching follows peft's rules so that a config means the same thing in
both libraries: a list of names matches a module whose dotted path equals the
name or ends in ``.name``; a single string is a regular expression that must
match the whole path.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence

import torch
from torch import nn

BASE_PREFIXES = ("base_layer.", "base_model.")


class Adapter(nn.Module):
    """Marker base of every adapter module; ``enabled = False`` makes it run the wrapped base alone."""

    enabled: bool = True

    def adapter_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs that belong to this adapter itself, not to the module it wraps."""
        for name, p in self.named_parameters():
            if not name.startswith(BASE_PREFIXES):
                yield name, p


def adapters(model: nn.Module) -> Iterator[tuple[str, Adapter]]:
    """Every adapter module in ``model`` with its dotted path."""
    for name, module in model.named_modules():
        if isinstance(module, Adapter):
            yield name, module


def freeze_all_but_adapters(model: nn.Module) -> None:
    """requires_grad=False for every parameter except adapters' own parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    for _, adapter in adapters(model):
        for _, p in adapter.adapter_parameters():
            p.requires_grad_(True)


def inside_adapter(model: nn.Module) -> set[str]:
    """Paths of adapters' own sub-modules (``lora_A``, prompt encoders ...), which are never targets.

    The wrapped base (``base_layer``/``base_model``) is not included: it may be quantised or, for
    model-level adapters, carry layer adapters of its own.
    """
    inner = set()
    for prefix, module in adapters(model):
        for suffix, _ in module.named_modules():
            if suffix and not suffix.startswith(("base_layer", "base_model")):
                inner.add(f"{prefix}.{suffix}" if prefix else suffix)
    return inner


def module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer."""
    return next(itertools.chain(module.parameters(), module.buffers())).device


def name_matches(path: str, targets: Sequence[str] | str) -> bool:
    """peft's rule: a list matches a path equal to or ending in ``.name``; a string is a full-path regex."""
    if isinstance(targets, str):
        return re.fullmatch(targets, path) is not None
    return any(path == t or path.endswith("." + t) for t in targets)


def match_targets(model: nn.Module, targets: Sequence[str] | str, kinds: tuple[type, ...],
                  exclude: Sequence[str] = ()) -> list[str]:
    """Dotted paths of the modules of types ``kinds`` that ``targets`` selects (peft's matching rules).

    Args:
        model: any module tree.
        targets: list of names (``"q_proj"`` matches ``model.layers.0.self_attn.q_proj``) or one regex
            that must match the whole path.
        kinds: the module types an adapter can wrap; a matched module of another type is an error.
        exclude: leaf names never selected.
    Returns:
        The selected paths, in module order. Raises ValueError when nothing matches.
    """
    skip = inside_adapter(model)
    chosen = []
    for name, module in model.named_modules():
        if not name or name in skip or name.rsplit(".", 1)[-1] in exclude:
            continue
        if not name_matches(name, targets):
            continue
        if not isinstance(module, kinds):
            raise ValueError(f"target {name} is a {type(module).__name__}; this adapter wraps "
                             f"{', '.join(k.__name__ for k in kinds)}")
        chosen.append(name)
    if not chosen:
        raise ValueError(f"target_modules={targets!r} matched no module of type "
                         f"{', '.join(k.__name__ for k in kinds)}")
    return chosen


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at dotted ``path`` inside ``model``."""
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, new)
