"""Using more context than a model was trained on, one method per module.

- ``streaming``: StreamingLLM, attention sinks + a rolling window cache (Xiao et al. 2023).
"""
from llmkit.longctx.streaming import StreamingLLM, streaming_nll

__all__ = ["StreamingLLM", "streaming_nll"]
