"""Prefix tuning: trainable key/value prefixes in every attention layer.

Prefix tuning (Li & Liang 2021, arXiv:2101.00190) prepends n trainable key and
value vectors to every layer's attention, leaving all weights frozen. Learning
them directly is unstable, so the paper reparameterises: a small embedding
(n, dim) goes through an MLP (dim -> hidden -> tanh -> n_layers * 2 * kv_dim)
that emits all layers' prefixes at once (peft's ``prefix_projection``).
Without the projection the prefixes are one trainable table, which is also
what a trained adapter is saved as (the MLP's output; see ``format.py``).

Design: the prefixes reach attention through the model's own interface,
``CausalLM.forward(..., prefix_kv=)``, which every layer attends to before the
tokens' keys. They are recomputed from the live parameters on every call, so
gradients reach the encoder, and they are never written into the KV cache,
so a cache holds only real tokens. The tokens take positions n, n+1, ... (what
peft gets in transformers, where the prefix is a ``past_key_values`` of
length n). Prefix keys are learned vectors and are not rotated.

Only MHA/GQA/MQA attention is supported; MLA's latent cache stores a
compressed form that a key/value prefix does not map onto.
"""
from __future__ import annotations

import torch
from torch import nn

from llmkit.peft.base import freeze_all_but_adapters
from llmkit.peft.model_adapter import ModelAdapter


class PrefixEncoder(nn.Module):
    """The prefixes of all layers: (n_layers, 2, kv_heads, n, head_dim).

    Args:
        n_layers, n_prefix, kv_heads, head_dim, dim: the model's shape and the prefix length n.
        hidden: width of the reparameterisation MLP.
        projection: True: an (n, dim) embedding through the MLP; False: the (n, n_layers * 2 * kv_dim)
            table itself is trained (or loaded).
    """

    def __init__(self, n_layers: int, n_prefix: int, kv_heads: int, head_dim: int, dim: int, hidden: int = 512,
                 projection: bool = True):
        super().__init__()
        self.shape = (n_prefix, n_layers, 2, kv_heads, head_dim)
        width = n_layers * 2 * kv_heads * head_dim
        self.projection = projection
        self.embedding = nn.Parameter(torch.randn(n_prefix, dim if projection else width))
        if projection:
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, width))

    def table(self) -> torch.Tensor:
        """(n, n_layers * 2 * kv_dim): layer l's keys at 2l, values at 2l + 1 (peft's layout)."""
        return self.mlp(self.embedding) if self.projection else self.embedding

    def forward(self) -> torch.Tensor:
        return self.table().view(self.shape).permute(1, 2, 3, 0, 4)  # (L, 2, Hkv, n, D)


class PrefixTuningLM(ModelAdapter):
    """A ``CausalLM`` with trainable per-layer key/value prefixes.

    Args:
        base_model: an llmkit ``CausalLM`` with standard (non-MLA) attention.
        n_prefix: prefix length n.
        hidden: width of the reparameterisation MLP.
        projection: reparameterise through the MLP (see :class:`PrefixEncoder`).
    """

    def __init__(self, base_model: nn.Module, n_prefix: int = 10, hidden: int = 512, projection: bool = True):
        cfg = base_model.cfg
        if cfg.attention != "mha":
            raise ValueError(f"prefix tuning needs a key/value cache; attention={cfg.attention!r} is not supported")
        super().__init__(base_model, n_prefix, cache_slots=0)
        self.prefix_encoder = PrefixEncoder(cfg.n_layers, n_prefix, cfg.kv_heads, cfg.head_size, cfg.dim, hidden,
                                            projection).to(base_model.device)

    @property
    def n_prefix(self) -> int:
        return self.n_virtual

    def forward(self, input_ids: torch.Tensor, input_pos: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, return_aux_loss: bool = False,
                logits_to_keep: int = 0):
        """Logits (B, T, vocab) for ``input_ids`` (B, T); ``input_pos`` and the mask are the caller's (0-based)."""
        prefix = self.prefix_encoder() if self.enabled else None
        return self.base_model(input_ids, input_pos=input_pos, attention_mask=attention_mask,
                               return_aux_loss=return_aux_loss, logits_to_keep=logits_to_keep, prefix_kv=prefix)


def apply_prefix_tuning(model: nn.Module, n_prefix: int = 10, hidden: int = 512,
                        projection: bool = True) -> PrefixTuningLM:
    """Wrap ``model`` for prefix tuning and freeze everything but the prefix encoder."""
    wrapped = PrefixTuningLM(model, n_prefix, hidden, projection)
    freeze_all_but_adapters(wrapped)
    return wrapped
