"""Loading a model and its tokenizer together, by name or path.

Both come from the same place: an HF model directory holds the safetensors
and the tokenizer files side by side, and a GGUF file holds the weights and
the tokenizer in its metadata. Names (``smollm2-135m-instruct``) resolve
through :func:`llmkit.io.pull.resolve_model`, which downloads on first use.
"""
from __future__ import annotations

import os

import torch

from llmkit.model import CausalLM
from llmkit.tokenizer import Tokenizer


def load_model_and_tokenizer(name_or_path: str | os.PathLike, dtype: torch.dtype | None = None,
                             device: torch.device | str | None = None,
                             keep_quantized: bool = False) -> tuple[CausalLM, Tokenizer]:
    """Load ``(model, tokenizer)`` from a model name, an HF directory or a ``.gguf`` file.

    Args:
        name_or_path: a known model name, a directory with model and tokenizer files, or a GGUF file.
        dtype: weight dtype (e.g. ``torch.bfloat16``); None keeps the checkpoint's (GGUF: dequantised fp32).
        device: where to put the weights; None = CPU.
        keep_quantized: keep a GGUF file's Q8_0/Q4_0/Q4_1/Q4_K/Q6_K weights in their blocks
            (llmkit's block kernels; about the file's size in memory) instead of dequantising them.
    Returns:
        The model in eval mode and its tokenizer.
    Raises:
        KeyError: an unknown model name.
        FileNotFoundError: a missing path, or a directory without tokenizer files.
    """
    from llmkit.io.pull import resolve_model

    path = resolve_model(name_or_path)
    if path.is_dir() and not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path} has no tokenizer.json: save the tokenizer next to the model")
    tokenizer = Tokenizer.from_pretrained(path)
    model = CausalLM.from_pretrained(path, dtype=dtype, device=device, keep_quantized=keep_quantized)
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only embeds "
                         f"{model.cfg.vocab_size}")
    return model.eval(), tokenizer
