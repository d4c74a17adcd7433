"""The model: configurable LLaMA-family decoder (see transformer.py)."""
from llmkit.model.transformer import CausalLM, count_parameters

__all__ = ["CausalLM", "count_parameters"]
