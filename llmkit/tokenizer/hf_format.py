"""The Hugging Face tokenizer layout: reading and writing it.

A directory holds ``tokenizer.json`` (the whole ``tokenizers`` pipeline),
``tokenizer_config.json`` (special-token names, chat template)
and, in older checkpoints, ``special_tokens_map.json`` and
``chat_template.jinja``. We read all of them and write the first three, so
``transformers.AutoTokenizer`` loads what we save and encodes identically.

BOS/EOS insertion is the post-processor in ``tokenizer.json``, alone: like
transformers (5.x), we ignore ``add_bos_token``/``add_eos_token`` in
``tokenizer_config.json`` whenever ``tokenizer.json`` exists (real
checkpoints' ``tokenizer.json`` carries the BOS template), and never write
them. A ``chat_template.jinja`` file takes priority over the config's entry,
also as in transformers.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as Backend

SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_content(value: Any) -> str | None:
    """Special tokens are saved either as a string or as an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def _chat_template(directory: Path, config: dict[str, Any]) -> str | None:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        template = {t["name"]: t["template"] for t in template}.get("default")
    return template


def load_hf(path: Path) -> tuple[Backend, dict[str, Any]]:
    """Load an HF tokenizer directory, or a bare ``tokenizer.json``.

    Args:
        path: a directory with ``tokenizer.json``, or the ``tokenizer.json`` file itself
            (which carries no special-token names or chat template).

    Returns:
        The ``tokenizers`` backend and the keyword arguments for ``Tokenizer``.

    Raises:
        FileNotFoundError: no ``tokenizer.json`` at ``path``.
        ValueError: ``tokenizer.json`` cannot be parsed.
    """
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {file}")
    try:
        backend = Backend.from_file(str(file))
    except Exception as e:  # the Rust side raises a bare Exception
        raise ValueError(f"{file} is not a valid tokenizer.json: {e}") from e
    if not path.is_dir():
        return backend, {"chat_template": None} | dict.fromkeys(SPECIAL_KEYS)

    config = _read_json(path / "tokenizer_config.json")
    legacy = _read_json(path / "special_tokens_map.json")
    kwargs: dict[str, Any] = {k: _token_content(config.get(k) or legacy.get(k)) for k in SPECIAL_KEYS}
    kwargs["chat_template"] = _chat_template(path, config)
    return backend, kwargs


def save_hf(directory: Path, backend: Backend, kwargs: dict[str, Any]) -> None:
    """Write the HF layout that :func:`load_hf` and ``AutoTokenizer`` read.

    Args:
        directory: created if missing; existing files of the same names are replaced.
        backend: the ``tokenizers`` pipeline, saved as ``tokenizer.json``.
        kwargs: special-token names and ``chat_template``, as :func:`load_hf` returns them.
    """
    directory.mkdir(parents=True, exist_ok=True)
    backend.save(str(directory / "tokenizer.json"))
    specials = {k: kwargs[k] for k in SPECIAL_KEYS if kwargs.get(k) is not None}
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        # transformers would otherwise "clean up" spaces before punctuation on decode.
        "clean_up_tokenization_spaces": False,
        **specials,
    }
    if kwargs.get("chat_template") is not None:
        config["chat_template"] = kwargs["chat_template"]
    for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", specials)):
        (directory / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
