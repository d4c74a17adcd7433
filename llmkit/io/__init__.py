"""Checkpoint I/O: HF safetensors directories, GGUF files, atomic writes."""
from llmkit.io.errors import CheckpointError
from llmkit.io.load import load_model

__all__ = ["CheckpointError", "load_model"]
