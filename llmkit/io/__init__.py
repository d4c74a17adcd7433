"""Checkpoint I/O: HF safetensors directories, GGUF files, atomic writes."""
from llmkit.io.errors import CheckpointError
from llmkit.io.gguf import export_gguf
from llmkit.io.load import load_model

__all__ = ["CheckpointError", "export_gguf", "load_model"]
