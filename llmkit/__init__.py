"""llmkit: a hackable, full-stack LLM toolkit in PyTorch."""
from llmkit.config import ModelConfig
from llmkit.model import CausalLM

__version__ = "0.1.0"
__all__ = ["CausalLM", "ModelConfig", "__version__"]
