"""The inference engine: continuous batching over a paged KV cache, prefix caching, chunked prefill,
preemption, and speculative decoding (see ``llm_engine.py`` for how the parts fit).

``LLM`` is the offline API (vLLM's): ``LLM(model).generate(prompts, SamplingParams(...))``.
``LLMEngine`` is the step-by-step core; ``AsyncLLMEngine`` streams from it for a server.
"""
from llmkit.engine.async_engine import AsyncLLMEngine
from llmkit.engine.llm import LLM
from llmkit.engine.llm_engine import LLMEngine
from llmkit.engine.outputs import CompletionOutput, RequestOutput
from llmkit.engine.speculative import SpeculativeConfig
from llmkit.generate.sampling import SamplingParams

__all__ = ["LLM", "AsyncLLMEngine", "CompletionOutput", "LLMEngine", "RequestOutput", "SamplingParams",
           "SpeculativeConfig"]
