"""Tokenised shards: a corpus as one token stream in ``.npy`` files plus a manifest.

Every document's tokens are followed by ``eos_id``, and the stream is cut into
shards of exactly ``shard_tokens`` tokens (the last one shorter), so documents
may straddle shards; :class:`~llmkit.data.loader.PackedLoader` reads the
shards as one array. Tokens are ``uint16`` when the vocabulary fits (halving
disk and page cache, as nanoGPT's ``train.bin``) and ``uint32`` otherwise.
``.npy`` rather than raw ``.bin`` so dtype and length travel with the data
and ``np.load(mmap_mode="r")`` maps them without reading.

``manifest.json`` is written last, after every shard, and atomically (a temp
file renamed into place), so a directory with a manifest is complete. Besides
the token counts it records ``num_bytes``, the UTF-8 length of the documents'
text (EOS separators count zero bytes), which bits per byte divide by.
Writing into a directory first removes its old ``shard_*.npy`` files.

The encoder is any ``str -> list[int]`` callable, e.g.
``lambda t: tokenizer.encode(t, add_special_tokens=False)``: the separator is
added here, so the encoder must not add its own.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.data.document import Document

MANIFEST = "manifest.json"
FORMAT = "llmkit-shards-v1"


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` for vocabularies up to 65536 ids, else ``uint32``."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def write_shards(docs: Iterable[Document], encode: Callable[[str], list[int]], out_dir: str | Path, *,
                 eos_id: int, vocab_size: int, shard_tokens: int = 2**24, source: str = "") -> dict[str, Any]:
    """Tokenise documents into ``shard_00000.npy, ...`` and ``manifest.json`` under ``out_dir``.

    Args:
        docs: documents, written in this order.
        encode: text -> token ids, without special tokens.
        out_dir: created if missing.
        eos_id: separator appended after every document.
        vocab_size: every id must be below it; picks the dtype.
        shard_tokens: tokens per shard (16M by default: 32 MB as uint16).
        source: free-form provenance for the manifest, e.g. ``"shakespeare/train"``.

    Returns:
        The manifest that was written (``num_bytes``: the documents' UTF-8 bytes, for bits per byte).
    """
    if not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos_id {eos_id} is outside the vocabulary [0, {vocab_size})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("shard_*.npy"):
        old.unlink()
    (out / MANIFEST).unlink(missing_ok=True)
    dtype = token_dtype(vocab_size)
    shards: list[dict[str, Any]] = []
    pending: list[np.ndarray] = []
    pending_len = num_docs = num_bytes = 0

    def flush(final: bool) -> None:
        nonlocal pending, pending_len
        stream = np.concatenate(pending) if pending else np.zeros(0, dtype)
        cut = 0
        while len(stream) - cut >= shard_tokens or (final and cut < len(stream)):
            piece = stream[cut:cut + shard_tokens]
            name = f"shard_{len(shards):05d}.npy"
            np.save(out / name, piece)
            shards.append({"file": name, "tokens": int(len(piece))})
            cut += len(piece)
        pending, pending_len = [stream[cut:]], len(stream) - cut

    for doc in docs:
        ids = np.asarray(list(encode(doc.text)) + [eos_id], dtype=np.int64)
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(f"{doc.title!r}: token id {int(ids.max())} is outside [0, {vocab_size})")
        pending.append(ids.astype(dtype))
        pending_len += len(ids)
        num_docs += 1
        num_bytes += len(doc.text.encode("utf-8"))
        if pending_len >= shard_tokens:
            flush(final=False)
    flush(final=True)
    manifest = {
        "format": FORMAT, "dtype": dtype.name, "vocab_size": vocab_size, "eos_id": eos_id,
        "num_docs": num_docs, "num_tokens": sum(s["tokens"] for s in shards), "num_bytes": num_bytes,
        "source": source, "shards": shards,
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out / MANIFEST)
    return manifest


def read_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """Load and check ``manifest.json`` of a shard directory written by :func:`write_shards`."""
    path = Path(shard_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: not a shard directory, or writing did not finish")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest
