"""Text generation: sampling, beam search, stop strings, streaming, and a fast decode loop."""
from llmkit.generate.loop import TokenResult, TokenStream, generate_tokens
from llmkit.generate.sampling import SamplingParams

__all__ = ["SamplingParams", "TokenResult", "TokenStream", "generate_tokens"]
