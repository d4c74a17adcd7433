"""The :class:`Tokenizer`: one object for loading, training, encoding and chat.

It is a thin layer over a ``tokenizers.Tokenizer`` (the Rust pipeline that
does the actual work) plus the things that pipeline does not hold: the names
of the BOS/EOS/PAD/UNK tokens and the chat template. Every source ends up in
that same pair: an HF directory or ``tokenizer.json`` (``hf_format``), a
GGUF file's metadata (``gguf_format``), or a training run (``train``), and
``save_pretrained`` writes the HF layout that ``transformers`` reads back.

Conventions: ``vocab_size`` counts every id the model must embed (added
tokens included); BOS/EOS insertion is whatever the backend's post-processor
does (set from ``add_bos_token`` on load); batches are left-padded by
default, which is what generation wants (every row's last token is real).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer as Backend

from llmkit.tokenizer.chat import CHATML_TEMPLATE, CHATML_TOKENS, Message, assistant_spans, render_chat
from llmkit.tokenizer.gguf_format import load_gguf
from llmkit.tokenizer.hf_format import SPECIAL_KEYS, load_hf, save_hf
from llmkit.tokenizer.stream import StreamDecoder
from llmkit.tokenizer.train import DEFAULT_SPECIAL_TOKENS, train_bpe


class Tokenizer:
    """Text <-> token ids, special tokens, batching, streaming decode, chat templates.

    Args:
        backend: the ``tokenizers`` pipeline.
        bos_token: beginning-of-sequence token, if any.
        eos_token: end-of-sequence token (generation stops on it), if any.
        pad_token: token used for padding batches, if any.
        unk_token: unknown token, if any (byte-level BPE needs none).
        chat_template: Jinja chat template, if any.
    """

    def __init__(
        self,
        backend: Backend,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.backend = backend
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token, self.unk_token = pad_token, unk_token
        self.chat_template = chat_template

    # ---- construction ------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Tokenizer:
        """Load from an HF tokenizer directory, a bare ``tokenizer.json``, or a ``.gguf`` file.

        Raises:
            FileNotFoundError: nothing to load at ``path``.
            ValueError: the file is corrupt or describes an unsupported tokenizer.
        """
        path = Path(path)
        backend, kwargs = load_gguf(path) if path.suffix == ".gguf" else load_hf(path)
        return cls(backend, **kwargs)

    @classmethod
    def train(
        cls,
        data: Iterable[str | os.PathLike],
        vocab_size: int,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        min_frequency: int = 2,
    ) -> Tokenizer:
        """Train a byte-level BPE (GPT-4 split, 256 byte tokens) with the ChatML template.

        Args:
            data: texts (``str``) and/or files (``pathlib.Path``).
            vocab_size: final size, special tokens and the 256 bytes included.
            special_tokens: ids ``0..k-1``; the first is the end-of-text token, used as EOS
                and PAD; the ChatML markers are appended if missing.
            min_frequency: a pair must occur this often to be merged.
        """
        backend = train_bpe(data, vocab_size, special_tokens, min_frequency)
        eos = special_tokens[0] if special_tokens else None
        return cls(backend, eos_token=eos, pad_token=eos, chat_template=CHATML_TEMPLATE)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
        save_hf(Path(directory), self.backend, self._config())

    def _config(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SPECIAL_KEYS} | {"chat_template": self.chat_template}

    # ---- vocabulary ----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the embedding table's size)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Every special token (matched whole in text, skippable on decode) and its id."""
        return {t.content: i for i, t in self.backend.get_added_tokens_decoder().items() if t.special}

    def token_to_id(self, token: str) -> int | None:
        """Id of ``token``, or None if it is not in the vocabulary."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string (ByteLevel alphabet, e.g. ``"Ġthe"``) of an id, or None if out of range."""
        return self.backend.id_to_token(token_id)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        """Id of ``bos_token`` (None if unset)."""
        return self._id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        """Id of ``eos_token`` (None if unset)."""
        return self._id(self.eos_token)

    @property
    def pad_id(self) -> int | None:
        """Id of ``pad_token`` (None if unset)."""
        return self._id(self.pad_token)

    # ---- encoding / decoding -------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special tokens written in it are recognised.

        Args:
            text: input text.
            add_special_tokens: let the post-processor add BOS/EOS (if this tokenizer does).
        """
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(
        self,
        texts: Sequence[str],
        add_special_tokens: bool = True,
        padding_side: Literal["left", "right"] = "left",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode several texts into one padded batch.

        Args:
            texts: B input texts.
            add_special_tokens: as in :meth:`encode`.
            padding_side: ``"left"`` for generation (the last column is every row's
                last real token), ``"right"`` for training.

        Returns:
            ``(ids, attention_mask)``, both int64 of shape (B, T) with T the longest
            row; padding has mask 0 and id ``pad_id`` (0 if there is none: it is masked).
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        rows = [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]
        width = max((len(r) for r in rows), default=0)
        pad = self.pad_id if self.pad_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
        for b, row in enumerate(rows):
            cols = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
            ids[b, cols] = torch.tensor(row, dtype=torch.long)
            mask[b, cols] = 1
        return ids, mask

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; incomplete UTF-8 sequences become ``U+FFFD``."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        """A fresh incremental decoder: ``.step(id) -> str`` deltas, ``.flush()`` at the end."""
        return StreamDecoder(partial(self.decode, skip_special_tokens=skip_special_tokens))

    # ---- chat ----------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        assistant_mask: bool = False,
        **template_kwargs: Any,
    ) -> str | list[int] | tuple[list[int], list[int]]:
        """Render (and optionally tokenize) a conversation with the chat template.

        Without a chat template, ChatML is used if this vocabulary has its markers.

        Args:
            messages: ``{"role": ..., "content": ...}`` dicts, oldest first.
            add_generation_prompt: end with the header that opens an assistant turn.
            tokenize: return token ids instead of text (encoded without BOS/EOS
                insertion, since the template writes its own special tokens).
            assistant_mask: with ``tokenize``, also return a 0/1 list marking the
                tokens of assistant replies (content through end-of-turn token).
            **template_kwargs: extra template variables; they override ``bos_token`` etc.

        Returns:
            The text; or its ids; or ``(ids, mask)`` when ``assistant_mask``.

        Raises:
            ValueError: no usable template, ``assistant_mask`` without ``tokenize``,
                or a template whose assistant turns cannot be located.
        """
        if assistant_mask and not tokenize:
            raise ValueError("assistant_mask=True needs tokenize=True")
        variables = {k: v for k in SPECIAL_KEYS if (v := getattr(self, k)) is not None} | template_kwargs
        template = self._template()
        if not assistant_mask:
            text = render_chat(template, messages, add_generation_prompt, **variables)
            return self.encode(text, add_special_tokens=False) if tokenize else text
        text, spans = assistant_spans(template, messages, add_generation_prompt, **variables)
        enc = self.backend.encode(text, add_special_tokens=False)
        mask = [int(any(s < end and e > start for start, end in spans)) for s, e in enc.offsets]
        return enc.ids, mask

    def _template(self) -> str:
        if self.chat_template is not None:
            return self.chat_template
        if all(t in self.special_tokens for t in CHATML_TOKENS):
            return CHATML_TEMPLATE
        raise ValueError("this tokenizer has no chat template, and no ChatML tokens to fall back on")
