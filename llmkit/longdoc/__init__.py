"""Long documents with a short-context model: token-budgeted splitting and map-reduce / refine / map-rerank.

``summarize(text, model, tokenizer, method=...)`` works with an llmkit model
or any OpenAI-compatible endpoint (:class:`OpenAIChat`); ``llmkit summarize FILE``
is its command line.
"""
from llmkit.longdoc.llm import LLM, LocalLLM, OpenAIChat
from llmkit.longdoc.split import sentences, split_text
from llmkit.longdoc.summarize import METHODS, Summary, summarize

__all__ = ["LLM", "METHODS", "LocalLLM", "OpenAIChat", "Summary", "sentences", "split_text", "summarize"]
