"""Using more context than a model was trained on, one method per module.

- ``streaming``: StreamingLLM, attention sinks + a rolling window cache (Xiao et al. 2023).
- ``nbce``: naive Bayes context extension, contexts as batch rows combined per step (Su 2023).
- ``pcw``: parallel context windows, windows encoded from position 0 and their caches concatenated (Ratner et al. 2023).
"""
from llmkit.longctx.nbce import nbce_combine, nbce_generate
from llmkit.longctx.pcw import ParallelContext, pcw_generate
from llmkit.longctx.streaming import StreamingLLM, streaming_nll

__all__ = ["ParallelContext", "pcw_generate", "nbce_combine", "nbce_generate", "StreamingLLM", "streaming_nll"]
