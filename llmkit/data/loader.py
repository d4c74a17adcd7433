"""`PackedLoader`: fixed-length training batches from tokenised shards, resumable exactly.

The shards are one memory-mapped token stream. An epoch cuts it into
non-overlapping windows of ``seq_len + 1`` tokens (``x`` is a window without
its last token, ``y`` without its first), starting at a random offset in
``[0, seq_len)`` so that repeated epochs see different cut points, and visits
them in a random order. Everything random is drawn from
``default_rng([seed, epoch])``, so the whole schedule is a pure function of
``(seed, epoch, step)``: :meth:`state_dict` is just those counters, and a
resumed run yields exactly the batches an uninterrupted one would.

Data parallelism: each step consumes ``batch_size * world_size`` windows of
the shared order and rank ``r`` takes the ``r``-th slice, so ranks never see
the same window and all agree on when an epoch ends (incomplete final global
batches are dropped).

Document boundaries: sequences are packed across documents and attention is
not blocked at ``eos_id`` (as in GPT-2 and nanoGPT; the model learns to
ignore text before a separator). With ``mask_boundaries=True`` the one target
that crosses a boundary -- the first token of a document, predicted from the
separator and the previous document -- becomes ``-100`` (ignored by
``cross_entropy``). Predicting the separator itself stays a target, so the
model still learns to end documents. Leave it off to also learn how
documents begin, which unconditional sampling from ``eos_id`` relies on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmkit.data.shards import read_manifest

IGNORE_INDEX = -100


class PackedLoader:
    """Infinite iterator of ``(x, y)`` LongTensor ``(batch_size, seq_len)`` batches.

    Args:
        shard_dir: directory written by :func:`~llmkit.data.shards.write_shards`.
        seq_len: tokens per sequence.
        batch_size: sequences per batch on this rank.
        seed: fixes offsets and order of every epoch.
        rank: this process's data-parallel rank.
        world_size: number of data-parallel ranks.
        shuffle: random offsets and order; ``False`` walks the stream in order
            from token 0 every epoch (for validation).
        mask_boundaries: set targets that start a new document to ``-100``.
    """

    def __init__(self, shard_dir: str | Path, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True, mask_boundaries: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        manifest = read_manifest(shard_dir)
        self.shards = [np.load(Path(shard_dir) / s["file"], mmap_mode="r") for s in manifest["shards"]]
        self.shard_starts = np.cumsum([0] + [len(s) for s in self.shards])  # (num_shards + 1,)
        self.num_tokens = int(self.shard_starts[-1])
        self.eos_id = manifest["eos_id"]
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.mask_boundaries = shuffle, mask_boundaries
        global_batch = batch_size * world_size
        if (self.num_tokens - seq_len) // seq_len < global_batch:  # worst-case offset seq_len - 1
            raise ValueError(f"{self.num_tokens} tokens cannot fill one global batch of "
                             f"{global_batch} x {seq_len + 1} tokens")
        self.epoch = self.step = 0
        self._order_epoch, self._order = -1, np.zeros(0, dtype=np.int64)

    def _windows(self) -> np.ndarray:
        """Start offsets of this epoch's windows in visiting order (cached per epoch)."""
        if self._order_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            offset = int(rng.integers(self.seq_len)) if self.shuffle else 0
            count = (self.num_tokens - 1 - offset) // self.seq_len
            starts = offset + self.seq_len * np.arange(count, dtype=np.int64)
            self._order = starts[rng.permutation(count)] if self.shuffle else starts
            self._order_epoch = self.epoch
        return self._order

    def _read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the stream, across shard boundaries."""
        out = np.empty(length, dtype=np.int64)
        shard = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        filled = 0
        while filled < length:
            offset = start + filled - int(self.shard_starts[shard])
            piece = self.shards[shard][offset:offset + length - filled]
            out[filled:filled + len(piece)] = piece
            filled += len(piece)
            shard += 1
        return out

    def __iter__(self) -> PackedLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        global_batch = self.batch_size * self.world_size
        if (self.step + 1) * global_batch > len(self._windows()):
            self.epoch, self.step = self.epoch + 1, 0
        first = self.step * global_batch + self.rank * self.batch_size
        starts = self._windows()[first:first + self.batch_size]
        tokens = torch.from_numpy(np.stack([self._read(int(s), self.seq_len + 1) for s in starts]))
        x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # (B, T) each
        if self.mask_boundaries:
            y[x == self.eos_id] = IGNORE_INDEX
        self.step += 1
        return x, y

    def state_dict(self) -> dict[str, Any]:
        """Position (epoch, step) plus the settings a resumed loader must share."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "world_size": self.world_size, "shuffle": self.shuffle,
                "num_tokens": self.num_tokens}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`; settings that change the schedule must match."""
        for key in ("seed", "seq_len", "batch_size", "world_size", "shuffle", "num_tokens"):
            if state[key] != getattr(self, key):
                raise ValueError(f"cannot resume: saved {key}={state[key]!r}, this loader has {getattr(self, key)!r}")
        self.epoch, self.step = state["epoch"], state["step"]
