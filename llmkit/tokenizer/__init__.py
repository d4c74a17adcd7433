"""Tokenizers: byte-level BPE loading (HF, GGUF), training, chat templates, streaming decode.

``Tokenizer`` is the public entry point; ``bpe`` is a pure-Python reference
implementation of the same algorithm, kept for reading and for tests.
"""
from llmkit.tokenizer.chat import CHATML_TEMPLATE
from llmkit.tokenizer.stream import StreamDecoder
from llmkit.tokenizer.tokenizer import Tokenizer

__all__ = ["CHATML_TEMPLATE", "StreamDecoder", "Tokenizer"]
