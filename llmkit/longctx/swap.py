"""Running a model with another attention core: the layers' own projections, a different softmax over keys.

Methods that must see the queries to decide which keys to attend (InfLLM's
block retrieval, kNN attention) or that split the sequence over processes
(:mod:`llmkit.parallel`) cannot work through the KV cache's ``update`` alone.
They temporarily replace each layer's ``self_attn`` with a module of their own
that keeps the original as ``base`` and reuses its projections and QK-norm
(``Attention.project_qkv`` / ``project_out``), so weights, adapters (LoRA wraps
``q_proj`` in place) and quantized linears all carry over; :func:`swap_attention`
puts the originals back on exit, even after an error.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

from llmkit.model import CausalLM
from llmkit.model.attention import Attention


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
