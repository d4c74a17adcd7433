"""Training a byte-level BPE tokenizer with the ``tokenizers`` trainer.

The recipe is GPT-4's: split text with the cl100k regex, map bytes to
ByteLevel's 256 printable characters, and learn merges from there. All 256
bytes are seeded into the initial alphabet, so every string encodes (no
unknown token) even if the corpus never contained some byte. Special tokens
take the first ids, in the order given; the ChatML markers are always among
them so the default ChatML chat template tokenizes as intended. See
``bpe.py`` for the same algorithm in plain Python.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, trainers
from tokenizers import pre_tokenizers as pt

from llmkit.tokenizer.backend import bos_eos_processor, special_added_token
from llmkit.tokenizer.chat import CHATML_TOKENS
from llmkit.tokenizer.pretokenizers import cl100k

DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>", *CHATML_TOKENS)


def _texts(data: Iterable[str | os.PathLike]) -> Iterator[str]:
    """Strings are texts; path objects are UTF-8 files read line by line."""
    for item in data:
        if isinstance(item, os.PathLike):
            with open(item, encoding="utf-8") as f:
                yield from f
        else:
            yield item


def train_bpe(
    data: Iterable[str | os.PathLike],
    vocab_size: int,
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
    min_frequency: int = 2,
) -> Backend:
    """Learn a byte-level BPE with the cl100k pre-tokenizer.

    Args:
        data: texts (``str``) and/or files (``pathlib.Path``), consumed once.
        vocab_size: final size, special tokens and the 256 bytes included.
        special_tokens: ids ``0..k-1``; the ChatML markers are appended if missing.
        min_frequency: a pair must occur this often to be merged.

    Returns:
        The trained ``tokenizers`` backend (no BOS/EOS insertion).

    Raises:
        ValueError: ``vocab_size`` cannot hold the special tokens and 256 bytes.
    """
    specials = list(dict.fromkeys([*special_tokens, *CHATML_TOKENS]))
    if vocab_size < len(specials) + 256:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: it must hold {len(specials)} special tokens + 256 bytes"
        )
    backend = Backend(models.BPE())
    backend.pre_tokenizer = cl100k()
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[special_added_token(t) for t in specials],
        initial_alphabet=pt.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_texts(data), trainer=trainer)
    backend.post_processor = bos_eos_processor(None, None)
    return backend
