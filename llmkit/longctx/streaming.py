"""StreamingLLM (Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks").

A model trained on a finite context can run over an unbounded stream if its
KV cache keeps the first ``sinks`` tokens (the "attention sinks" that soak up
softmax mass) plus a rolling window of the most recent tokens, and positions
are assigned *inside the cache*: sink ``i`` sits at position ``i`` and the
window follows contiguously, so no query ever sees a distance beyond
``sinks + window``. Without the sinks (``sinks=0``, the plain sliding window)
perplexity collapses as soon as the first tokens are evicted.

Design. This composes the model's static cache; it adds no attention code.
``setup_caches(B, sinks + window)`` allocates the slots; each token is written
at the next slot, or, once the cache is full, the window's slots are shifted
left by one (evicting the oldest) and the token goes into the last slot. Keys
are cached already rotated (RoPE), so instead of re-rotating the whole cache
every step, the window keeps the rotation of each token's true stream
position and the query is rotated by its true position too: for window keys
the query-key distance is then exactly the in-cache distance. Only the sink
keys need moving: from a copy of them as first written (positions
``0..sinks-1``) they are re-rotated each step to sit just before the oldest
window token. That is exact because RoPE scores depend on position
differences only, and it costs ``sinks`` rotations per layer per step.

Limits: RoPE (any static scaling) or no positions; ``dynamic`` RoPE scaling
derives its angles from the absolute position and is refused, as are learned
or sinusoidal tables (positions added to the embeddings cannot be moved).
Rows of a batch advance in lockstep (no padding). Positions grow with the
stream, computed in float32 as the model does; past ~10^6 tokens the angle
rounding becomes visible.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from llmkit.generate.sampling import SamplingParams
from llmkit.longctx.sampling import generate_by_feeding, last_index
from llmkit.model import CausalLM
from llmkit.model.rope import apply_rope

_SCORE_BLOCK = 1024  # tokens scored per feed in streaming_nll


class StreamingLLM:
    """Runs ``model`` over an unbounded token stream with a KV cache of ``sinks + window`` slots.

    Args:
        model: a CausalLM with RoPE or no positions (eval mode).
        window: recent tokens kept, the current one included (> 0).
        sinks: first tokens kept forever (StreamingLLM uses 4; 0 = plain sliding window).
        batch_size: rows fed in lockstep.
        chunk: tokens per forward once the cache is full (<= window). 1 is StreamingLLM exactly; more
            is faster, at the price that the i-th token of a chunk sees ``chunk - 1 - i`` fewer window tokens.
    """

    def __init__(self, model: CausalLM, window: int, sinks: int = 4, batch_size: int = 1, chunk: int = 1):
        cfg = model.cfg
        if window < 1 or sinks < 0 or not 1 <= chunk <= window:
            raise ValueError(f"need window >= 1, sinks >= 0 and 1 <= chunk <= window; got window={window}, "
                             f"sinks={sinks}, chunk={chunk}")
        if cfg.pos_embedding not in ("rope", "none") or cfg.rope_scaling == "dynamic" or cfg.attention != "mha":
            raise ValueError("StreamingLLM needs standard attention with RoPE (static scaling) or no positions; "
                             f"got attention={cfg.attention!r}, pos_embedding={cfg.pos_embedding!r}, "
                             f"rope_scaling={cfg.rope_scaling!r}")
        self.model, self.window, self.sinks, self.batch_size, self.chunk = model, window, sinks, batch_size, chunk
        self.capacity = sinks + window
        self.reset()

    def reset(self) -> None:
        """Start a new stream (the cache is reallocated only if its shape changed)."""
        self.model.setup_caches(self.batch_size, self.capacity)
        self.seen = 0  # tokens fed so far = the stream position of the next token
        self._sink_keys: list[torch.Tensor] | None = None  # per layer (B, Hkv, sinks, D), as first written

    @property
    def cached(self) -> int:
        """Tokens now held in the cache (never more than ``sinks + window``)."""
        return min(self.seen, self.capacity)

    def _caches(self):
        return [layer.self_attn.kv_cache for layer in self.model.model.layers]

    def _rotate(self, k: torch.Tensor, delta: int) -> torch.Tensor:
        """Keys (B, H, S, D) moved ``delta`` positions later: the model's RoPE angles of ``delta``, unscaled."""
        rope = self.model.model.positions
        if self.model.cfg.pos_embedding == "none" or delta == 0:
            return k
        cos, sin = rope(torch.full((1, 1), delta, device=k.device))
        return apply_rope(k.float(), cos / rope.attention_factor, sin / rope.attention_factor,
                          layout=self.model.cfg.rope_layout).to(k.dtype)

    def _evict(self, n: int) -> None:
        """Drop the ``n`` oldest window tokens and move the sinks to sit right before the new oldest one."""
        s, c = self.sinks, self.capacity
        oldest = self.seen + n - self.window  # stream position of the oldest token kept after this step
        for i, cache in enumerate(self._caches()):
            for buf in (cache.k, cache.v):
                buf[:, :, s:c - n] = buf[:, :, s + n:c].clone()
            if s:
                cache.k[:, :, :s] = self._rotate(self._sink_keys[i], oldest - s)

    def _forward(self, ids: torch.Tensor, slots: torch.Tensor, last_only: bool) -> torch.Tensor:
        positions = torch.arange(self.seen, self.seen + ids.shape[1], device=ids.device)[None].expand(ids.shape[0], -1)
        logits = self.model(ids, input_pos=slots, position_ids=positions,
                            logits_indices=last_index(ids) if last_only else None)
        if self._sink_keys is None and self.seen + ids.shape[1] >= self.sinks:
            self._sink_keys = [cache.k[:, :, :self.sinks].clone() for cache in self._caches()]
        self.seen += ids.shape[1]
        return logits

    @torch.no_grad()
    def feed(self, ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Append tokens to the stream and return their next-token logits.

        Tokens that still fit go through in one forward; after that, ``chunk`` tokens per forward,
        each forward evicting as many of the oldest window tokens.

        Args:
            ids: (B, T) token ids, B = ``batch_size``.
            last_only: compute and return only the last token's logits.
        Returns:
            (B, T, vocab) logits, row t the prediction after token t; (B, 1, vocab) with ``last_only``.
        """
        if ids.dim() != 2 or ids.shape[0] != self.batch_size:
            raise ValueError(f"ids must be (batch_size={self.batch_size}, T), got {tuple(ids.shape)}")
        device = ids.device
        out = []
        fit = min(ids.shape[1], self.capacity - self.cached)
        if fit:
            out.append(self._forward(ids[:, :fit], torch.arange(self.seen, self.seen + fit, device=device), last_only))
        for t in range(fit, ids.shape[1], self.chunk):
            piece = ids[:, t:t + self.chunk]
            n = piece.shape[1]
            self._evict(n)
            out.append(self._forward(piece, torch.arange(self.capacity - n, self.capacity, device=device), last_only))
        return out[-1] if last_only else torch.cat(out, dim=1)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, sampling: SamplingParams | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Feed ``prompt`` (B, T), then generate ``max_new_tokens`` (B, N) ids, with no length limit."""
        return generate_by_feeding(self.feed, prompt, max_new_tokens, sampling, generator)


def streaming_nll(model: CausalLM, ids: torch.Tensor, window: int, sinks: int = 4, chunk: int = 1,
                  progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Negative log-likelihood of every token of a long stream under StreamingLLM.

    Args:
        model: the language model.
        ids: (B, T) token ids.
        window, sinks, chunk: the cache and its step (see :class:`StreamingLLM`).
        progress: called with the number of tokens fed so far after every block of them (logs, memory probes).
    Returns:
        (B, T - 1) float32: ``nll[:, t]`` = -log p(ids[:, t + 1] | the cache after ids[:, t]).
    """
    stream = StreamingLLM(model, window, sinks, batch_size=ids.shape[0], chunk=chunk)
    nll = []
    for start in range(0, ids.shape[1] - 1, _SCORE_BLOCK):  # bounds the logits held at once
        targets = ids[:, start + 1:start + _SCORE_BLOCK + 1]
        logits = stream.feed(ids[:, start:start + targets.shape[1]]).float()
        nll.append(F.cross_entropy(logits.transpose(1, 2), targets, reduction="none"))
        if progress is not None:
            progress(start + targets.shape[1])
    return torch.cat(nll, dim=1)
