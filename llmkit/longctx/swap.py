"""Running a model with another attention core: the layers' own projections, a different softmax over keys.

Methods that must see the queries to decide which keys to attend (InfLLM's
block retrieval, kNN attention) or that split the sequence over processes
(:mod:`llmkit.parallel`) cannot work through the KV cache's ``update`` alone.
They temporarily replace each layer's ``self_attn`` with a module of their own
that keeps the original as ``base`` and reuses its projections and QK-norm
(:func:`project_qkv`, :func:`project_out`), so weights, adapters (LoRA wraps
``q_proj`` in place) and quantized linears all carry over; :func:`swap_attention`
puts the originals back on exit, even after an error.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from llmkit.model import CausalLM
from llmkit.model.attention import Attention


def project_qkv(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, T, dim) -> q (B, H, T, D), k and v (B, Hkv, T, D), before RoPE (QK-norm applied)."""
    b, t, _ = x.shape
    q = attn.q_proj(x).view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, attn.kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, t, attn.kv_heads, attn.head_dim).transpose(1, 2)
    if attn.cfg.qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    return q, k, v


def project_out(attn: Attention, y: torch.Tensor) -> torch.Tensor:
    """Attention output y (B, H, T, D) -> (B, T, dim) through ``o_proj``."""
    b, _, t, _ = y.shape
    return attn.o_proj(y.transpose(1, 2).reshape(b, t, -1))


@contextmanager
def swap_attention(model: CausalLM, build: Callable[[Attention], nn.Module]) -> Iterator[list[nn.Module]]:
    """Inside the block every layer's ``self_attn`` is ``build(original)``; yields the new modules in layer order."""
    layers = model.model.layers
    originals = [layer.self_attn for layer in layers]
    if not all(isinstance(a, Attention) for a in originals):
        raise ValueError(f"this method needs standard attention (attention='mha'), not {model.cfg.attention!r}")
    try:
        for layer, attn in zip(layers, originals):
            layer.self_attn = build(attn)
        yield [layer.self_attn for layer in layers]
    finally:
        for layer, attn in zip(layers, originals):
            layer.self_attn = attn
