"""AdamW with decoupled weight decay on matrices only, and parameter freezing by name.

Weight decay (Loshchilov & Hutter 2019) pulls weights towards zero, which
regularises the matrices that mix features but only distorts parameters that
set a scale or an offset: norm gains, biases, and embedding rows (a rare
token's row would be decayed on every step while receiving gradient almost
never). So the optimizer gets two groups: parameters with ``ndim >= 2`` that
are not owned by an ``nn.Embedding`` decay; everything else does not. A tied
``lm_head`` is the embedding matrix and so is not decayed either.

Freezing sets ``requires_grad=False`` and leaves the parameter out of the
optimizer altogether (no moments are allocated for it). Patterns are
shell globs over parameter names (``model.layers.[0-3].*``) or, prefixed with
``re:``, regular expressions that must match the whole name. A pattern that
matches nothing is an error: a typo must not silently train everything.
"""
from __future__ import annotations

import fnmatch
import re

import torch
from torch import nn


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def freeze(model: nn.Module, patterns: list[str]) -> list[str]:
    """Set ``requires_grad=False`` on every parameter whose name matches a pattern.

    Args:
        model: the model (before any DDP/FSDP wrapping, so names are the plain ones).
        patterns: globs, or regexes prefixed with ``re:``.

    Returns:
        The frozen parameter names.

    Raises:
        ValueError: a pattern matches no parameter.
    """
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(_matches(n, pattern) for n in names):
            raise ValueError(f"freeze pattern {pattern!r} matches no parameter (e.g. {names[0]!r}, {names[-1]!r})")
    frozen = []
    for name, p in model.named_parameters():
        if any(_matches(name, pat) for pat in patterns):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups of the trainable parameters: decayed matrices, and the rest at zero decay."""
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():  # tied weights appear once
        if p.requires_grad:
            (decay if p.ndim >= 2 and id(p) not in embedding_params else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the betas, eps and weight decay of ``cfg`` (a TrainConfig).

    The fused CUDA kernel is used when the parameters live on a GPU.
    """
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ValueError("no trainable parameters: every parameter is frozen")
    on_cuda = groups[0]["params"][0].device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=on_cuda or None)
