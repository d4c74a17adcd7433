"""From whatever names a model to its ``ModelConfig``, without loading weights: the one resolver every verb uses.

A spec is tried as, in order:

1. a preset name (:data:`llmkit.presets.PRESETS`): the config, no weights;
2. a ``.json`` file: an HF ``config.json`` (it has ``model_type``) or a
   ``ModelConfig`` (what ``llmkit info NAME --json`` prints), no weights;
3. an existing HF model directory (its ``config.json``) or ``.gguf`` file (its
   metadata header; no tensor is dequantised);
4. a model name of :data:`llmkit.io.pull.MODELS`, pulled into the cache on
   first use and read as 3.

The result says where the config came from, so a caller can tell a random-init
config (a preset or config file) from a checkpoint with weights
(:attr:`ModelSource.weights`), and ``llmkit info`` can say what it read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmkit.config import ModelConfig
from llmkit.io.gguf import read_gguf_config
from llmkit.io.hf import read_hf_config, read_json_object
from llmkit.io.hf_config import config_from_hf
from llmkit.io.pull import MODELS, resolve_model
from llmkit.presets import PRESETS

SourceKind = Literal["preset", "config", "hf", "gguf"]
ACCEPTED = "a preset, a model to pull, an HF model directory, a .gguf file or a config .json"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model spec: the config and where it was read."""

    config: ModelConfig
    kind: SourceKind  # preset name, config .json, HF model directory, GGUF file
    name: str  # the spec as given (a preset's or pulled model's name, or a path)
    path: Path | None  # the file or directory read; None for a preset
    description: str  # one line for people: "preset tiny", "llama checkpoint out/model", ...

    @property
    def weights(self) -> Path | None:
        """The checkpoint holding the model's weights (HF directory or GGUF file); None for a config alone."""
        return self.path if self.kind in ("hf", "gguf") else None


def resolve_config(spec: str | os.PathLike) -> ModelSource:
    """Resolve ``spec`` (see the module docstring for the order) to its config, reading no weights.

    Args:
        spec: a preset name, a config ``.json``, an HF model directory, a ``.gguf`` file or a pullable model name.

    Returns:
        The :class:`ModelSource`.

    Raises:
        KeyError: an unknown name; the message lists the presets, the pullable models and the path kinds.
        FileNotFoundError: a path that does not exist.
        ValueError: a file that is not a valid config (:class:`~llmkit.io.CheckpointError` for checkpoints).
        FetchError: pulling a named model failed.
    """
    text = os.fspath(spec)
    if text in PRESETS:
        return ModelSource(PRESETS[text], "preset", text, None, f"preset {text}")
    path = Path(text).expanduser()
    if path.suffix == ".json":
        return ModelSource(_read_json_config(path), "config", text, path, f"config file {path}")
    if not path.exists() and text not in MODELS and os.sep not in text and path.suffix != ".gguf":
        raise KeyError(f"unknown preset {text!r}, and not a model to pull or an existing path; give a preset "
                       f"({', '.join(sorted(PRESETS))}), a model to pull ({', '.join(sorted(MODELS))}), "
                       "an HF model directory, a .gguf file or a config .json")
    path = resolve_model(text)
    if path.suffix == ".gguf":
        return ModelSource(read_gguf_config(path), "gguf", text, path, f"GGUF file {path}")
    cfg, raw = read_hf_config(path)
    return ModelSource(cfg, "hf", text, path, f"{raw.get('model_type')} checkpoint {path}")


def _read_json_config(path: Path) -> ModelConfig:
    """A ``ModelConfig`` from an HF ``config.json`` or a ``ModelConfig`` JSON."""
    if not path.is_file():
        raise FileNotFoundError(f"no such model config: {path}")
    raw = read_json_object(path)
    if "model_type" in raw or "llmkit_config" in raw:  # an HF config.json
        return config_from_hf(raw)
    return ModelConfig.from_dict(raw)
