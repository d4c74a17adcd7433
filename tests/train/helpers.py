"""Helpers for the trainer tests: a tiny config, byte-level shards, an in-test batch source."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from llmkit.train import TrainConfig

TINY = dict(vocab_size=256, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=64)
WORDS = ["the", "king", "queen", "said", "to", "and", "of", "a", "lord", "good", "night", "my"]


def tiny_cfg(tmp_path: Path, **overrides) -> TrainConfig:
    """A TrainConfig for a ~40k-parameter model on the CPU; ``model_overrides`` entries merge with TINY."""
    model_overrides = {**TINY, **overrides.pop("model_overrides", {})}
    base = dict(model="tiny", model_overrides=model_overrides, data="unused", out_dir=str(tmp_path / "run"),
                seq_len=16, batch_size=4, max_steps=6, warmup_steps=2, lr=3e-3, device="cpu", plot=False,
                eval_every=0, save_every=0, seed=0)
    return TrainConfig.from_dict({**base, **overrides})


class RandomBatches:
    """Seeded random ``(x, y)`` batches, a pure function of (seed, step); ``y`` may be partly -100.

    Args:
        on_step: ``{batch_index: callable}`` run just before that batch is returned.
    """

    def __init__(self, vocab: int = 256, batch: int = 4, seq: int = 16, seed: int = 0, ignore_frac: float = 0.0,
                 on_step: dict | None = None):
        self.vocab, self.batch, self.seq, self.seed, self.ignore_frac = vocab, batch, seq, seed, ignore_frac
        self.on_step = on_step or {}
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        x = torch.randint(0, self.vocab, (self.batch, self.seq), generator=g)
        y = torch.randint(0, self.vocab, (self.batch, self.seq), generator=g)
        y[torch.rand(y.shape, generator=g) < self.ignore_frac] = -100
        if self.step in self.on_step:
            self.on_step[self.step]()
        self.step += 1
        return x, y

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        assert state["seed"] == self.seed
        self.step = state["step"]


def write_byte_shards(directory: Path, n_docs: int = 40, words: int = 150, seed: int = 0) -> dict:
    """Shards of random English-like text, one token per byte (eos 0)."""
    from llmkit.data.document import Document
    from llmkit.data.shards import write_shards

    rng = np.random.default_rng(seed)
    docs = [Document(f"d{i}", " ".join(rng.choice(WORDS, words))) for i in range(n_docs)]
    return write_shards(docs, lambda t: list(t.encode()), directory, eos_id=0, vocab_size=256)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
