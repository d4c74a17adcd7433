"""Checkpoint I/O: HF safetensors directories, GGUF files, atomic writes, and resolving a model spec to its config."""
from llmkit.io.errors import CheckpointError
from llmkit.io.gguf import export_gguf
from llmkit.io.load import load_model
from llmkit.io.resolve import ModelSource, resolve_config

__all__ = ["CheckpointError", "ModelSource", "export_gguf", "load_model", "resolve_config"]
