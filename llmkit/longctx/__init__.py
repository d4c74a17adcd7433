"""Using more context than a model was trained on, one method per module.

- ``streaming``: StreamingLLM, attention sinks + a rolling window cache (Xiao et al. 2023).
- ``nbce``: naive Bayes context extension, contexts as batch rows combined per step (Su 2023).
- ``pcw``: parallel context windows, windows encoded from position 0 and their caches concatenated (Ratner et al. 2023).
- ``memory``: the core shared by the next two: sinks + local window + keys retrieved from evicted tokens.
- ``infllm``: InfLLM, evicted tokens in blocks with representative keys, top-k blocks per chunk (Xiao et al. 2024).
- ``knn``: Unlimiformer-style kNN attention, each query head attends to its top-k keys (Bertsch et al. 2023).
- ``swap``: running a model with another attention core (used by ``memory`` and ``llmkit.parallel``).
"""
from llmkit.longctx.infllm import BlockMemory, infllm
from llmkit.longctx.knn import KNNMemory, knn_attention
from llmkit.longctx.memory import MemoryLM
from llmkit.longctx.nbce import nbce_combine, nbce_generate
from llmkit.longctx.pcw import ParallelContext, pcw_generate
from llmkit.longctx.streaming import StreamingLLM, streaming_nll

__all__ = ["BlockMemory", "KNNMemory", "MemoryLM", "ParallelContext", "StreamingLLM", "infllm", "knn_attention",
           "nbce_combine", "nbce_generate", "pcw_generate", "streaming_nll"]
