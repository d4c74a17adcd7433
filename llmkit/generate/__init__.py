"""Text generation: sampling, beam search, stop strings, streaming, and a fast decode loop.

Layers, bottom up: ``processors`` (pure logits transforms) and ``sampling``
(parameters, on-device token choice); ``decoding`` (what both decoders share), ``loop`` (static-cache prefill + compiled
decode step, token ids only) and ``beam``; ``stop`` and ``prompts``; ``text``
(``generate``: prompts in, text out); ``load`` (model + tokenizer by name).
"""
from llmkit.generate.load import load_model_and_tokenizer
from llmkit.generate.decoding import TokenResult
from llmkit.generate.loop import TokenStream, generate_tokens
from llmkit.generate.sampling import SamplingParams
from llmkit.generate.text import GenerationResult, generate

__all__ = ["GenerationResult", "SamplingParams", "TokenResult", "TokenStream", "generate", "generate_tokens",
           "load_model_and_tokenizer"]
