"""Absolute position inputs, chosen by ``cfg.pos_embedding`` from the ``POSITIONS`` registry.

Every kind maps the token embeddings and their positions to new embeddings
plus the RoPE angles attention rotates by: absolute encodings (learned,
sinusoidal) are added to the embeddings and give no angles; RoPE leaves the
embeddings alone and gives (cos, sin). Each module sits in the decoder under
the attribute HF's checkpoints use (``embed_positions``, ``rotary_emb``), so
state dicts load without renaming.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from llmkit.config import ModelConfig
from llmkit.model.rope import RotaryEmbedding, sinusoidal_embedding

Rope = tuple[torch.Tensor, torch.Tensor] | None


class NoPositions(nn.Module):
    """No position signal (NoPE): causal masking alone tells tokens apart."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, Rope]:
        return x, None


class SinusoidalPositions(nn.Module):
    """Vaswani et al.'s fixed encodings, added to the embeddings."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dim = cfg.dim

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, Rope]:
        return x + sinusoidal_embedding(positions, self.dim).to(x.dtype), None


class LearnedPositions(nn.Embedding):
    """A trained table of ``max_seq_len`` position vectors (GPT-2), added to the embeddings."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.max_seq_len, cfg.dim)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, Rope]:
        return x + self(positions), None


class RotaryPositions(RotaryEmbedding):
    """RoPE: the embeddings pass unchanged; attention rotates queries and keys by the returned angles."""

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, Rope]:
        return x, self(positions)


# name -> (attribute in the decoder, builder); ``embed(x (B, T, dim), positions (B, T)) -> (x, rope)``
POSITIONS: dict[str, tuple[str, Callable[[ModelConfig], nn.Module]]] = {
    "none": ("embed_positions", NoPositions),
    "sinusoidal": ("embed_positions", SinusoidalPositions),
    "learned": ("embed_positions", LearnedPositions),
    "rope": ("rotary_emb", RotaryPositions),
}
