"""Loading a checkpoint by path: an HF model directory or a ``.gguf`` file, told apart by what is on disk.

Each format's reader yields ``(config, state dict)`` under our (HF) tensor
names; :func:`~llmkit.io.build.build_from_state_dict` turns that into a model.
:func:`read_checkpoint` stops before the model, for callers that bring their
own config (a training run that overrides dropout, say).
"""
from __future__ import annotations

from pathlib import Path

import torch

from llmkit.config import ModelConfig
from llmkit.io.build import build_from_state_dict
from llmkit.io.errors import CheckpointError
from llmkit.io.gguf import load_gguf, read_gguf
from llmkit.io.hf import read_hf_config, read_hf_state_dict
from llmkit.model import CausalLM


def read_checkpoint(path: str | Path, dtype: torch.dtype | None = None) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config and every tensor of an HF model directory or a ``.gguf`` file.

    Args:
        path: the directory (``config.json`` + safetensors) or the ``.gguf`` file.
        dtype: what GGUF tensors are dequantised to (None: float32); HF tensors keep the file's dtype.

    Raises:
        CheckpointError: a missing path, or one that is neither format; a corrupt file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such checkpoint: {path}")
    if path.is_file() and path.suffix == ".gguf":
        return read_gguf(path, dtype)
    if path.is_dir():
        cfg, raw = read_hf_config(path)
        return cfg, read_hf_state_dict(path, raw.get("model_type"))
    raise CheckpointError(f"{path} is neither a model directory (config.json + safetensors) nor a .gguf file")


def load_model(path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
               keep_quantized: bool = False) -> CausalLM:
    """Load an HF model directory or a ``.gguf`` file.

    Args:
        path: the directory or file.
        dtype: parameter dtype; None keeps the checkpoint's (GGUF: float32, what dequantisation yields).
        device: where the parameters live; None = CPU.
        keep_quantized: a ``.gguf`` file's Q8_0/Q4_0/Q4_1/Q4_K/Q6_K weights stay in llama.cpp's blocks
            (:func:`~llmkit.io.gguf.load_gguf`); without it they are dequantised. A directory's
            quantised layers are always kept, so this changes nothing there.

    Returns:
        The model in eval mode; a directory saved from a quantised model (``quantization_config`` in
        its config.json) comes back with the same quantised layers.
    """
    if keep_quantized and Path(path).is_file() and Path(path).suffix == ".gguf":
        return load_gguf(path, dtype, device, keep_quantized=True)
    cfg, state = read_checkpoint(path, dtype)
    quantization = read_hf_config(Path(path))[1].get("quantization_config") if Path(path).is_dir() else None
    return build_from_state_dict(cfg, state, dtype, device, source=str(path), quantization=quantization)
