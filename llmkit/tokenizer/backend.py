"""Assembling a byte-level BPE ``tokenizers.Tokenizer`` from its parts.

The Rust ``tokenizers`` library does the real work (regex split, byte
mapping, merges, added-token matching); this module only wires the pipeline
together, the same way for every source (GGUF metadata, a fresh training run,
an HF ``tokenizer.json`` whose BOS/EOS flags need applying):

    text ─ added-token match ─ pre-tokenizer (regex + ByteLevel) ─ BPE merges
         ─ post-processor (optional BOS/EOS) → ids ─ ByteLevel decoder → text

BOS/EOS insertion lives in the post-processor, so ``encode(...,
add_special_tokens=False)`` skips it and a saved ``tokenizer.json`` carries
it to ``transformers`` unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

from tokenizers import AddedToken
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, processors
from tokenizers import pre_tokenizers as pt


def byte_level_bpe(
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    pre_tokenizer: pt.PreTokenizer,
    special_tokens: Sequence[str] = (),
) -> Backend:
    """Build a byte-level BPE tokenizer from an existing vocabulary and merge list.

    Args:
        vocab: token string (in ByteLevel's printable alphabet) to id.
        merges: merge rules, highest priority first.
        pre_tokenizer: the regex split + ``ByteLevel`` stage (see ``pretokenizers``).
        special_tokens: tokens already in ``vocab`` that must match whole and
            never be split or merged (``<|im_start|>`` …).

    Returns:
        The assembled backend, with no post-processor yet.
    """
    backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([special_added_token(t) for t in special_tokens])
    return backend


def special_added_token(content: str) -> AddedToken:
    """An added token matched verbatim in raw text and flagged special (skippable on decode)."""
    return AddedToken(content, special=True, normalized=False)


def bos_eos_processor(
    bos: tuple[str, int] | None, eos: tuple[str, int] | None
) -> processors.TemplateProcessing:
    """The post-processor that wraps each encoded text in optional BOS/EOS tokens.

    Args:
        bos: ``(token, id)`` to prepend, or None.
        eos: ``(token, id)`` to append, or None.

    Returns:
        A ``TemplateProcessing`` laid out as transformers lays it out, so both
        libraries insert the same ids.
    """
    def wrap(seq: str, type_id: int) -> str:
        parts = [f"{bos[0]}:{type_id}"] if bos else []
        parts.append(f"${seq}:{type_id}")
        if eos:
            parts.append(f"{eos[0]}:{type_id}")
        return " ".join(parts)

    return processors.TemplateProcessing(
        single=wrap("A", 0),
        pair=f"{wrap('A', 0)} {wrap('B', 1)}",
        special_tokens=list(dict.fromkeys(t for t in (bos, eos) if t is not None)),
    )
