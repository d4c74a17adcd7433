"""From ``TrainConfig.data`` to training batches, validation batches and a tokenizer.

The trainer needs only an iterator of ``(x, y)`` LongTensor (B, T) batches
that can save and restore its position (:class:`Batches`), a factory of
fresh validation iterables, and, for bits per byte, the mean UTF-8 bytes per
validation token. This module builds those from what ``data`` names:

- **pretrain**, a shard directory (``manifest.json``, written by
  :func:`llmkit.data.shards.write_shards`): trained on with
  :class:`~llmkit.data.loader.PackedLoader`; validation from ``val_data``.
  A directory holding ``train/`` and ``val/`` shard directories supplies both.
- **pretrain**, a corpus name (``shakespeare``) or text path (``.txt``,
  ``.jsonl``, folder): loaded with :func:`llmkit.data.corpora.load_corpus`,
  split with :func:`llmkit.data.split.split_documents`, tokenised into
  ``out_dir/data/{train,val}``. The tokenizer is ``tokenizer``, else the
  checkpoint's (an HF directory's or a GGUF's), else a byte-level BPE of the
  model's vocabulary size trained on the training split and saved to
  ``out_dir/tokenizer``. The
  manifest's ``source`` records what was prepared, so a resumed run reuses
  the shards and a changed config rebuilds them.
- **sft**, a ``.jsonl`` file of conversations (each line ``{"messages": [...]}``
  or a bare list of ``{"role", "content"}`` messages; read by
  :func:`llmkit.data.conversations.read_conversations`): tokenised with the
  chat template into :class:`~llmkit.data.sft.SFTDataset`, targets only on
  assistant tokens, batched by :class:`ConversationBatches`.

Under sequence parallelism (``cfg.sequence_parallel``) every rank reads the
same batches (:func:`data_ranks`) and the trainer gives each rank its chunk of
every sequence.

Bytes per token come from ``num_bytes / num_tokens`` in the validation
manifest (``write_shards`` records both); shards without ``num_bytes`` give no
bits per byte, and prepared ones without it are rebuilt.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from llmkit.data.conversations import read_conversations
from llmkit.data.loader import PackedLoader
from llmkit.data.shards import MANIFEST, read_manifest, write_shards
from llmkit.io import resolve_config
from llmkit.train.distributed import Dist, barrier

Batch = tuple[torch.Tensor, torch.Tensor]


class Batches(Protocol):
    """An endless, resumable source of ``(x, y)`` training batches."""

    def __next__(self) -> Batch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Data:
    """What the trainer consumes.

    Attributes:
        train: this rank's training batches.
        val: returns a fresh, finite iterable of this rank's validation batches; None = no evaluation.
        bytes_per_token: mean UTF-8 bytes per validation token, for bits per byte.
        tokenizer: saved beside the final model when known.
    """

    train: Batches
    val: Callable[[], Iterable[Batch]] | None = None
    bytes_per_token: float | None = None
    tokenizer: Any = None


class ConversationBatches:
    """Shuffled, right-padded batches of ``(x, y)`` items (e.g. an SFTDataset), resumable exactly.

    The order of epoch ``e`` is ``default_rng([seed, e]).permutation`` (or the dataset order without
    ``shuffle``); each step takes ``batch_size * world_size`` items and rank ``r`` the ``r``-th slice,
    as :class:`~llmkit.data.loader.PackedLoader` does. The incomplete final global batch is dropped.
    ``collate`` turns the drawn items into the batch (default: :func:`llmkit.data.sft.collate` with
    ``pad_id``); alignment loops pass their own for preference pairs or prompts.
    """

    def __init__(self, items, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad_id: int = 0, shuffle: bool = True, collate: Callable[[list], Any] | None = None):
        if len(items) < batch_size * world_size:
            raise ValueError(f"{len(items)} conversations cannot fill one global batch of {batch_size * world_size}")
        self.items, self.batch_size, self.seed = items, batch_size, seed
        self.rank, self.world_size, self.pad_id, self.shuffle = rank, world_size, pad_id, shuffle
        self.collate = collate
        self.epoch = self.step = 0
        self.steps_per_epoch = len(items) // (batch_size * world_size)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        from llmkit.data.sft import collate

        if self.step == self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        n = len(self.items)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        first = (self.step * self.world_size + self.rank) * self.batch_size
        self.step += 1
        drawn = [self.items[int(i)] for i in order[first:first + self.batch_size]]
        return self.collate(drawn) if self.collate else collate(drawn, self.pad_id)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "batch_size": self.batch_size,
                "world_size": self.world_size, "num_items": len(self.items)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (("seed", self.seed), ("batch_size", self.batch_size), ("world_size", self.world_size),
                          ("num_items", len(self.items))):
            if state[key] != mine:
                raise ValueError(f"cannot resume: saved {key}={state[key]!r}, this loader has {mine!r}")
        self.epoch, self.step = state["epoch"], state["step"]


def data_ranks(cfg, d: Dist) -> tuple[int, int]:
    """(rank, world size) the batches are split over: the job's, or (0, 1) when ranks split sequences instead."""
    return (0, 1) if cfg.sequence_parallel != "none" else (d.rank, d.world_size)


# ----- tokenizers -----
def load_tokenizer(path: str | Path):
    from llmkit.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(path)


def model_tokenizer(model: str):
    """The tokenizer of checkpoint ``model`` (anything :func:`llmkit.io.resolve_config` accepts).

    An HF directory's ``tokenizer.json`` or a GGUF file's tokenizer metadata; None for a preset or
    config file (no checkpoint), or an HF directory saved without tokenizer files.
    """
    weights = resolve_config(model).weights
    if weights is None or (weights.is_dir() and not (weights / "tokenizer.json").is_file()):
        return None
    return load_tokenizer(weights)


# ----- pretraining -----
def _shard_dirs(data: str) -> tuple[Path, Path | None] | None:
    """(train, val) shard dirs named by ``data``, or None if it names no shard directory."""
    p = Path(data)
    if (p / MANIFEST).exists():
        return p, None
    if (p / "train" / MANIFEST).exists():
        return p / "train", (p / "val" if (p / "val" / MANIFEST).exists() else None)
    return None


def _bytes_per_token(shard_dir: Path) -> float | None:
    manifest = read_manifest(shard_dir)
    return manifest["num_bytes"] / manifest["num_tokens"] if manifest.get("num_bytes") else None


def prepare_corpus(cfg, vocab_size: int, d: Dist) -> tuple[Path, Path, Any]:
    """Tokenise the corpus ``cfg.data`` into ``out_dir/data/{train,val}`` (rank 0; the others wait).

    Returns:
        (train shard dir, val shard dir, tokenizer).
    """
    out = Path(cfg.out_dir)
    train_dir, val_dir, tok_dir = out / "data" / "train", out / "data" / "val", out / "tokenizer"
    tokenizer = (load_tokenizer(cfg.tokenizer) if cfg.tokenizer else model_tokenizer(cfg.model))
    source = json.dumps({"data": cfg.data, "tokenizer": cfg.tokenizer or cfg.model, "vocab_size": vocab_size})
    ready = all((p / MANIFEST).exists() and read_manifest(p).get("source") == source
                and "num_bytes" in read_manifest(p) for p in (train_dir, val_dir))
    if d.is_main and not ready:
        from llmkit.data.corpora import load_corpus
        from llmkit.data.split import split_documents

        docs = load_corpus(cfg.data)
        train_docs, val_docs = split_documents(docs, cfg.data if not Path(cfg.data).exists() else "")
        if tokenizer is None:
            from llmkit.tokenizer import Tokenizer

            print(f"llmkit train: training a {vocab_size}-token BPE tokenizer on {cfg.data}")
            tokenizer = Tokenizer.train([doc.text for doc in train_docs], vocab_size)
            tokenizer.save_pretrained(tok_dir)
        if tokenizer.eos_id is None:
            raise ValueError("the tokenizer has no EOS token to separate documents with")
        for docs_, dir_ in ((train_docs, train_dir), (val_docs, val_dir)):
            write_shards(docs_, lambda t: tokenizer.encode(t, add_special_tokens=False), dir_,
                         eos_id=tokenizer.eos_id, vocab_size=max(vocab_size, tokenizer.vocab_size), source=source)
    barrier(d)
    if tokenizer is None:
        tokenizer = load_tokenizer(tok_dir)
    return train_dir, val_dir, tokenizer


def pretrain_data(cfg, vocab_size: int, d: Dist) -> Data:
    """Packed next-token batches from shards named or prepared from ``cfg.data``."""
    dirs = _shard_dirs(cfg.data)
    if dirs is None:
        train_dir, val_dir, tokenizer = prepare_corpus(cfg, vocab_size, d)
    else:
        train_dir, val_dir = dirs
        tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else model_tokenizer(cfg.model)
    if cfg.val_data:
        val_dir = Path(cfg.val_data)
    for shard_dir in (train_dir, val_dir):
        if shard_dir is not None and read_manifest(shard_dir)["vocab_size"] > vocab_size:
            raise ValueError(f"{shard_dir} was tokenised for {read_manifest(shard_dir)['vocab_size']} ids but the "
                             f"model's vocab_size is {vocab_size}: set model_overrides.vocab_size")
    rank, world = data_ranks(cfg, d)
    train = PackedLoader(train_dir, cfg.seq_len, cfg.batch_size, cfg.seed, rank, world)
    if val_dir is None:
        return Data(train, tokenizer=tokenizer)
    windows = (read_manifest(val_dir)["num_tokens"] - 1) // cfg.seq_len  # unshuffled: cut from token 0
    available = windows // (cfg.batch_size * world)  # each window once, no wrap-around

    def val() -> Iterable[Batch]:
        return islice(PackedLoader(val_dir, cfg.seq_len, cfg.batch_size, cfg.seed, rank, world,
                                   shuffle=False), available)

    return Data(train, val, _bytes_per_token(val_dir), tokenizer)


# ----- supervised fine-tuning -----
def sft_data(cfg, vocab_size: int, d: Dist) -> Data:
    """Assistant-only-target batches from ``cfg.data`` (and ``cfg.val_data``) conversation files."""
    from llmkit.data.sft import SFTDataset

    tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else model_tokenizer(cfg.model)
    if tokenizer is None:
        raise ValueError(f"sft needs a tokenizer with a chat template: {cfg.model!r} has none, set tokenizer")
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {vocab_size}")
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0

    def dataset(path: str) -> SFTDataset:
        return SFTDataset(read_conversations(path), tokenizer, cfg.seq_len)

    rank, world = data_ranks(cfg, d)
    train = ConversationBatches(dataset(cfg.data), cfg.batch_size, cfg.seed, rank, world, pad)
    if not cfg.val_data:
        return Data(train, tokenizer=tokenizer)
    val_items = dataset(cfg.val_data)

    def val() -> Iterable[Batch]:
        loader = ConversationBatches(val_items, cfg.batch_size, cfg.seed, rank, world, pad, shuffle=False)
        return islice(loader, loader.steps_per_epoch)

    return Data(train, val, tokenizer=tokenizer)


def build_data(cfg, vocab_size: int, d: Dist) -> Data:
    """The :class:`Data` for ``cfg.task``."""
    return sft_data(cfg, vocab_size, d) if cfg.task == "sft" else pretrain_data(cfg, vocab_size, d)

