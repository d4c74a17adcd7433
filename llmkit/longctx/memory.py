"""Attention with a context memory: sinks + a local window + keys retrieved from everything evicted.

The shared core of InfLLM (:mod:`llmkit.longctx.infllm`, retrieval of whole
blocks) and Unlimiformer-style kNN attention (:mod:`llmkit.longctx.knn`,
retrieval of single keys per query). A long input is fed in chunks; each
layer's attention is replaced (:func:`~llmkit.longctx.swap.swap_attention`)
by :class:`MemoryAttention`, whose queries attend to the union of

- the *local* part: the last ``window`` tokens before the chunk and the
  chunk itself (causally), with ordinary RoPE distances counted inside it,
  so they never exceed ``window + chunk``;
- the *global* part: the first ``sinks`` tokens plus whatever the memory
  retrieves for these queries. Following InfLLM, every global key sits at
  position 0 and the queries are rotated by the fixed position ``window``,
  so all memory is "just beyond the window" however old it is.

Both parts' scores go through one softmax, so with a memory that returns
everything and no positions (NoPE) this is exactly full attention; with the
window covering the input it is exactly plain attention. A token leaving the
window carries a *representative score* to the memory: the sum of the
scores it received from the queries of its window (InfLLM's choice of the
tokens that stand for a block).

Keys and values live in the layer objects (on the model's device); the
attention per query costs ``sinks + retrieved + window`` keys whatever the
input length, while the memory itself grows with the input (InfLLM offloads
it to CPU; here it stays where the model is).
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.generate.sampling import SamplingParams
from llmkit.longctx.sampling import generate_by_feeding, last_index
from llmkit.longctx.swap import swap_attention
from llmkit.model import CausalLM
from llmkit.model.attention import Attention
from llmkit.model.metadata import AttentionMetadata
from llmkit.model.rope import apply_rope


class ContextMemory(Protocol):
    """Where one layer's evicted tokens go; grouped layout (B, Hkv, ...) throughout."""

    def add(self, k: torch.Tensor, v: torch.Tensor, score: torch.Tensor) -> None:
        """Store evicted keys/values (B, Hkv, n, D) with their representative scores (B, Hkv, n)."""

    def retrieve(self, q: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For queries (B, Hkv, G, T, D): (scores (B, Hkv, G, T, N), values (B, Hkv, N, Dv) shared by
        the queries or (B, Hkv, G, T, N, Dv) per query), or None when there is nothing to retrieve."""


def append_tokens(old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    """``new`` appended to ``old`` along the token axis (dim 2 of (B, Hkv, n, ...)); ``old`` may be None."""
    return new if old is None else torch.cat([old, new], dim=2)


class MemoryAttention(nn.Module):
    """``base``'s projections with sinks + local window + retrieved memory; holds one layer's state."""

    def __init__(self, base: Attention, rope: nn.Module | None, memory: ContextMemory, sinks: int, window: int):
        super().__init__()
        self.base, self.rope, self.memory, self.sinks, self.window = base, rope, memory, sinks, window
        self.scale = base.head_dim ** -0.5
        self.local: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # k, v, score of the window
        self.sink_kv: tuple[torch.Tensor, torch.Tensor] | None = None  # at position 0
        self.attended = 0  # keys the last chunk's queries attended to (at most)

    def _rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.rope is None:
            return x
        cos, sin = self.rope(positions[None])
        return apply_rope(x, cos, sin, layout=self.base.cfg.rope_layout)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.base.project_qkv(x)  # unrotated
        b, h, t, d = q.shape
        hkv = k.shape[1]
        lk, lv, lscore = self.local or (k[:, :, :0], v[:, :, :0], k.new_zeros(b, hkv, 0))
        n_old = lk.shape[2]
        keys, values = torch.cat([lk, k], dim=2), torch.cat([lv, v], dim=2)  # (B, Hkv, L, D), L = n_old + t
        pos = torch.arange(n_old + t, device=x.device)
        ql = self._rotate(q, pos[n_old:]).view(b, hkv, h // hkv, t, d)
        local = torch.einsum("bhgqd,bhkd->bhgqk", ql.float(), self._rotate(keys, pos).float()) * self.scale
        visible = pos[None, :] <= pos[n_old:, None]  # (T, L) causal
        local = local.masked_fill(~visible, float("-inf"))

        parts = [(local, values)]
        qg = self._rotate(q, torch.full((t,), self.window, device=x.device)).view(b, hkv, h // hkv, t, d)
        if self.sink_kv is not None:
            sk, sv = self.sink_kv
            parts.append((torch.einsum("bhgqd,bhkd->bhgqk", qg.float(), sk.float()) * self.scale, sv))
        if (found := self.memory.retrieve(qg, self.scale)) is not None:
            parts.append(found)
        logits = torch.cat([s for s, _ in parts], dim=-1)
        probs = logits.softmax(dim=-1)
        out, start = 0, 0
        for scores, vals in parts:
            p = probs[..., start:start + scores.shape[-1]]
            start += scores.shape[-1]
            pattern = "bhgqk,bhkd->bhgqd" if vals.dim() == 4 else "bhgqk,bhgqkd->bhgqd"
            out = out + torch.einsum(pattern, p, vals.float())
        self.attended = int(torch.isfinite(logits).sum(-1).max())  # keys one query scored (not masked out)

        received = local.masked_fill(~visible, 0).sum(dim=(2, 3))  # (B, Hkv, L): scores each key got
        self._advance(keys, values, torch.cat([lscore, lscore.new_zeros(b, hkv, t)], dim=2) + received)
        return self.base.project_out(out.view(b, h, t, -1).to(x.dtype))

    def _advance(self, keys: torch.Tensor, values: torch.Tensor, score: torch.Tensor) -> None:
        """Keep the last ``window`` tokens; the rest fill the sinks first, then go to the memory at position 0."""
        n_out = max(keys.shape[2] - self.window, 0)
        self.local = (keys[:, :, n_out:], values[:, :, n_out:], score[:, :, n_out:])
        if not n_out:
            return
        ek = self._rotate(keys[:, :, :n_out], torch.zeros(n_out, dtype=torch.long, device=keys.device))
        ev, escore = values[:, :, :n_out], score[:, :, :n_out]
        have = 0 if self.sink_kv is None else self.sink_kv[0].shape[2]
        take = max(min(self.sinks - have, n_out), 0)
        if take:
            old_k, old_v = self.sink_kv or (None, None)
            self.sink_kv = (append_tokens(old_k, ek[:, :, :take]), append_tokens(old_v, ev[:, :, :take]))
        if take < n_out:
            self.memory.add(ek[:, :, take:], ev[:, :, take:], escore[:, :, take:])


class MemoryLM:
    """Feeds an input of any length through ``model`` in chunks, each layer attending with its memory.

    Args:
        model: a CausalLM with standard attention and RoPE or no positions.
        make_memory: builds one empty :class:`ContextMemory` per layer.
        window: local tokens kept between chunks, seen with true distances.
        sinks: first tokens always attended (at the memory's position).
        chunk: tokens per forward when feeding.
    """

    def __init__(self, model: CausalLM, make_memory, window: int, sinks: int = 4, chunk: int = 64):
        cfg = model.cfg
        if cfg.pos_embedding not in ("rope", "none"):
            raise ValueError(f"needs RoPE or no positions, not pos_embedding={cfg.pos_embedding!r}")
        if window < 1 or sinks < 0 or chunk < 1:
            raise ValueError(f"need window >= 1, sinks >= 0, chunk >= 1; got {window}, {sinks}, {chunk}")
        if window + chunk > cfg.max_seq_len:
            raise ValueError(f"window + chunk ({window + chunk}) exceeds the model's context ({cfg.max_seq_len})")
        self.model, self.chunk = model, chunk
        rope = model.model.positions if cfg.pos_embedding == "rope" else None
        self.layers = {id(layer.self_attn): MemoryAttention(layer.self_attn, rope, make_memory(), sinks, window)
                       for layer in model.model.layers}

    @torch.no_grad()
    def feed(self, ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Append ``ids`` (B, T) to the input; returns their next-token logits (B, T, vocab), or only the
        last one's (B, 1, vocab) with ``last_only``."""
        out = []
        with swap_attention(self.model, lambda attn: self.layers[id(attn)]):
            for start in range(0, ids.shape[1], self.chunk):
                piece = ids[:, start:start + self.chunk]
                out.append(self.model(piece, logits_indices=last_index(piece) if last_only else None))
        return out[-1] if last_only else torch.cat(out, dim=1)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, sampling: SamplingParams | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Feed ``prompt`` (B, T) then generate ``max_new_tokens`` ids (B, N)."""
        return generate_by_feeding(self.feed, prompt, max_new_tokens, sampling, generator)

    def nll(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T - 1) negative log-likelihood of each next token of ``ids`` fed from the start."""
        logits = self.feed(ids)[:, :-1].float()
        return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
