"""Reading a tokenizer out of a GGUF file's metadata.

llama.cpp's GGUF stores the tokenizer as metadata keys next to the weights:
the token list, its merges, a type per token, the special-token ids, whether
to prepend BOS, the chat template, and the pre-tokenizer's name. We read them
with ``gguf.GGUFReader``, which memory-maps the file and parses only the
header, so the (large) tensor data is never read. Only the byte-level BPE
(``tokenizer.ggml.model == "gpt2"``) is supported; SentencePiece-style
``llama`` vocabularies are rejected with a clear error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as Backend

from llmkit.tokenizer.backend import bos_eos_processor, byte_level_bpe
from llmkit.tokenizer.pretokenizers import pre_tokenizer

# llama.cpp's token types (``llama_token_type``): 3 is a control token (our
# "special"), 4 a user-defined token that still matches whole in raw text.
_CONTROL, _USER_DEFINED = 3, 4


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """Read the ``tokenizer.*`` metadata of a GGUF file as plain Python values.

    Args:
        path: the ``.gguf`` file.

    Returns:
        Metadata key to value (str, int, bool, or list of those).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable GGUF file.
    """
    from gguf import GGUFReader  # deferred: importing gguf costs ~0.2 s

    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        reader = GGUFReader(path, "r")
        return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    except Exception as e:  # GGUFReader signals corruption with assorted exception types
        raise ValueError(f"{path} is not a valid GGUF file: {type(e).__name__}: {e}") from e


def load_gguf(path: Path) -> tuple[Backend, dict[str, Any]]:
    """Build the tokenizer a GGUF file describes.

    Args:
        path: the ``.gguf`` file.

    Returns:
        The ``tokenizers`` backend and the keyword arguments for ``Tokenizer``
        (``bos_token``, ``eos_token``, ``pad_token``, ``unk_token``, ``chat_template``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: corrupt file, no tokenizer in it, or an unsupported
            ``tokenizer.ggml.model`` / ``tokenizer.ggml.pre``.
    """
    meta = read_gguf_metadata(path)
    model = meta.get("tokenizer.ggml.model")
    if model is None:
        raise ValueError(f"{path} holds no tokenizer (no tokenizer.ggml.model key)")
    if model != "gpt2":
        raise ValueError(
            f"unsupported tokenizer.ggml.model {model!r} in {path}: only 'gpt2' (byte-level BPE) is supported"
        )
    missing = [k for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges") if k not in meta]
    if missing:
        raise ValueError(f"{path} has a gpt2 tokenizer without {' and '.join(missing)}")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    # llama.cpp falls back to GPT-2's split when a converter wrote no name.
    pre = pre_tokenizer(meta.get("tokenizer.ggml.pre", "gpt2"))

    control = [t for t, ty in zip(tokens, types) if ty == _CONTROL]
    backend = byte_level_bpe({t: i for i, t in enumerate(tokens)}, merges, pre, control)
    backend.add_tokens([
        AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == _USER_DEFINED
    ])

    def special(key: str) -> tuple[str, int] | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return (tokens[i], i) if i is not None and 0 <= i < len(tokens) else None

    bos, eos, pad, unk = (special(k) for k in ("bos", "eos", "padding", "unknown"))
    backend.post_processor = bos_eos_processor(
        bos if meta.get("tokenizer.ggml.add_bos_token", False) else None,
        eos if meta.get("tokenizer.ggml.add_eos_token", False) else None,
    )
    kwargs = {
        "bos_token": bos and bos[0],
        "eos_token": eos and eos[0],
        "pad_token": pad and pad[0],
        "unk_token": unk and unk[0],
        "chat_template": meta.get("tokenizer.chat_template"),
    }
    return backend, kwargs
