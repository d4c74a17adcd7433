"""Prompt tuning and P-tuning: n trainable virtual tokens prepended to every input.

Prompt tuning (Lester et al. 2021, arXiv:2104.08691) learns the n embeddings
directly; they start as copies of randomly chosen vocabulary embeddings, which
the paper found better than random vectors. P-tuning (Liu et al. 2021,
arXiv:2103.10385) produces them with a prompt encoder, a bidirectional LSTM
followed by an MLP, or just an MLP (peft offers both), fed with trainable
input embeddings; the encoder makes the virtual tokens depend on each other
and trains more stably.

Design, for llmkit's ``CausalLM`` calling convention
(``model(input_ids, input_pos=None, attention_mask=None)``):
- Virtual tokens get ids ``vocab_size .. vocab_size + n - 1``. The embedding
  layer is wrapped (kept as ``base_layer``) so those ids look up the virtual
  table, and every other part of the model sees ordinary tokens: RoPE, masks
  and the KV cache need no change.
- ``VirtualTokenLM`` prepends those ids and drops their logits. They occupy
  positions and cache slots 0..n-1; the caller's slot p becomes p + n, and the
  call that writes slot 0 (the prefill) writes the virtual tokens too, so
  cached generation works unchanged (``setup_caches`` reserves n extra slots;
  the rest of the inference interface comes from :class:`ModelAdapter`).
- A padding mask gets n leading ones: the virtual tokens are always attended.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from llmkit.peft.base import Adapter, freeze_all_but_adapters, replace_module
from llmkit.peft.model_adapter import ModelAdapter

PromptEncoder = Literal["none", "mlp", "lstm"]


class VirtualTokenEmbedding(Adapter):
    """An embedding whose ids >= ``num_embeddings`` of the base select trainable virtual tokens.

    Args:
        base_layer: the model's token embedding.
        n_virtual: number of virtual tokens.
        encoder: "none" (prompt tuning), "mlp" or "lstm" (P-tuning's prompt encoder).
        encoder_hidden: hidden width of the prompt encoder (default: the embedding width).
    """

    def __init__(self, base_layer: nn.Embedding, n_virtual: int, encoder: PromptEncoder = "none",
                 encoder_hidden: int | None = None):
        super().__init__()
        self.base_layer = base_layer
        vocab, dim = base_layer.weight.shape
        hidden = encoder_hidden or dim
        rows = torch.randint(0, vocab, (n_virtual,), device=base_layer.weight.device)
        self.prompt_embeddings = nn.Parameter(base_layer.weight.detach()[rows].float().clone())  # (n, dim)
        self.encoder = encoder
        if encoder == "lstm":
            self.lstm = nn.LSTM(dim, hidden, num_layers=2, bidirectional=True, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        elif encoder == "mlp":
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, dim))
        elif encoder != "none":
            raise ValueError(f"encoder={encoder!r}: choose 'none', 'mlp' or 'lstm'")
        self.to(base_layer.weight.device)

    def virtual_embeddings(self) -> torch.Tensor:
        """The n virtual token embeddings (n, dim), through the prompt encoder if there is one."""
        x = self.prompt_embeddings
        if self.encoder == "lstm":
            x = self.lstm(x[None])[0][0]  # (n, 2 * hidden)
        return self.mlp(x) if self.encoder != "none" else x

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, dim)
        vocab = self.base_layer.num_embeddings
        virtual = ids >= vocab
        out = self.base_layer(ids.masked_fill(virtual, 0))
        if not self.enabled or not virtual.any():
            return out
        table = self.virtual_embeddings().to(out.dtype)
        return torch.where(virtual[..., None], table[(ids - vocab).clamp(min=0)], out)


class VirtualTokenLM(ModelAdapter):
    """A ``CausalLM`` with n virtual tokens in front of every sequence.

    Args:
        base_model: the wrapped ``CausalLM``.
        n_virtual: number of virtual tokens.
        encoder: "none" (prompt tuning), "mlp" or "lstm" (P-tuning).
        encoder_hidden: prompt-encoder width.
    """

    def __init__(self, base_model: nn.Module, n_virtual: int = 20, encoder: PromptEncoder = "none",
                 encoder_hidden: int | None = None):
        super().__init__(base_model, n_virtual, cache_slots=n_virtual)
        emb = base_model.model.embed_tokens
        self.vocab_size = emb.num_embeddings
        replace_module(base_model, "model.embed_tokens", VirtualTokenEmbedding(emb, n_virtual, encoder, encoder_hidden))

    @property
    def embedding(self) -> VirtualTokenEmbedding:
        return self.base_model.model.embed_tokens

    def forward(self, input_ids: torch.Tensor, input_pos: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, return_aux_loss: bool = False,
                logits_to_keep: int = 0):
        """Logits (B, T, vocab) for the real tokens only; ``input_pos`` are the caller's slots (0-based)."""
        kw = dict(return_aux_loss=return_aux_loss, logits_to_keep=logits_to_keep)
        if not self.enabled:
            return self.base_model(input_ids, input_pos=input_pos, attention_mask=attention_mask, **kw)
        b, n, device = input_ids.shape[0], self.n_virtual, input_ids.device
        prepend = input_pos is None or bool(input_pos[0] == 0)
        if input_pos is not None:
            input_pos = input_pos + n
        if prepend:
            virtual = torch.arange(self.vocab_size, self.vocab_size + n, device=device).expand(b, n)
            input_ids = torch.cat([virtual, input_ids], dim=1)  # (B, n + T)
            if input_pos is not None:
                input_pos = torch.cat([torch.arange(n, device=device), input_pos])
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(b, n), attention_mask], dim=1)
        out = self.base_model(input_ids, input_pos=input_pos, attention_mask=attention_mask, **kw)
        if not prepend or logits_to_keep:
            return out
        if return_aux_loss:
            return out[0][:, n:], out[1]
        return out[:, n:]


def apply_prompt_tuning(model: nn.Module, n_virtual: int = 20, encoder: PromptEncoder = "none",
                        encoder_hidden: int | None = None) -> VirtualTokenLM:
    """Wrap ``model`` for prompt tuning (``encoder="none"``) or P-tuning, and freeze everything else."""
    wrapped = VirtualTokenLM(model, n_virtual, encoder, encoder_hidden)
    freeze_all_but_adapters(wrapped)
    return wrapped
