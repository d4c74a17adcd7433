"""Constrained decoding for ``response_format`` and forced tool calls: a grammar's token mask as a logits processor.

The JSON-schema-to-automaton part is `llguidance <https://github.com/guidance-ai/llguidance>`_
(the grammar engine behind vLLM's and llama.cpp's structured output): it
compiles a schema to a grammar and, given the tokens so far, computes which
next tokens keep the output a prefix of a valid document (a bitmask over the
vocabulary, in microseconds). :class:`GrammarMask` is the engine's per-request
logits processor (see ``LLMEngine.add_request``): it sets forbidden tokens'
logits to -inf. Once the document is complete only EOS is allowed, so the
request ends by itself. The processor is called with each continuation's
output ids; it keeps one matcher per continuation, keyed by those ids, so
``n > 1`` continuations (which fork after the first token) each follow their
own state.
"""
from __future__ import annotations

from typing import Any

import torch

from llmkit.tokenizer import Tokenizer


def json_grammar(schema: dict[str, Any] | None) -> str:
    """The llguidance grammar of JSON documents matching ``schema`` (None = any JSON object).

    Raises:
        ValueError: a schema llguidance cannot compile, with its message.
    """
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        {"type": "object"} if schema is None else schema, defaults={"whitespace_flexible": False})
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ValueError(f"the JSON schema cannot be compiled: {messages[0]}")
    return grammar


class GrammarTokenizer:
    """llguidance's view of a tokenizer (built once per server: about a second for a 50k vocabulary)."""

    def __init__(self, tokenizer: Tokenizer):
        import llguidance

        if tokenizer.eos_id is None:
            raise ValueError("constrained decoding needs a tokenizer with an EOS token")
        self.ll = llguidance.LLTokenizer(tokenizer.backend.to_str(), eos_token=tokenizer.eos_id)
        self.vocab_size = self.ll.vocab_size


class GrammarMask:
    """A logits processor that allows only the tokens the grammar allows next.

    Args:
        tokenizer: the :class:`GrammarTokenizer` of the served model.
        grammar: from :func:`json_grammar`.
    """

    def __init__(self, tokenizer: GrammarTokenizer, grammar: str):
        import llguidance

        self.tokenizer, self.grammar = tokenizer, grammar
        self._matchers: dict[tuple[int, ...], llguidance.LLMatcher] = {}

    def _matcher(self, ids: tuple[int, ...]):
        import llguidance

        m = self._matchers.pop(ids[:-1], None) if ids else None
        if m is not None:  # the previous step's state, one token behind
            m.consume_token(ids[-1])
        else:  # a new continuation (or a fork): replay its tokens
            m = llguidance.LLMatcher(self.tokenizer.ll, self.grammar)
            m.consume_tokens(list(ids))
        self._matchers[ids] = m
        return m

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        """(V,) logits with the tokens the grammar forbids after ``output_ids`` set to -inf."""
        import llguidance.numpy as lnp  # not llguidance.torch: it imports torch._dynamo (seconds) and compiles

        m = self._matcher(tuple(output_ids))
        n = self.tokenizer.vocab_size
        bitmask = lnp.allocate_token_bitmask(1, n)
        lnp.fill_next_token_bitmask(m, bitmask, 0)
        words = torch.from_numpy(bitmask[0])  # int32 words, bit j of word i = token 32 i + j allowed
        allowed = ((words[:, None] >> _BITS) & 1).reshape(-1)[:n].bool().to(logits.device)
        out = torch.full_like(logits, float("-inf"))
        out[:n] = logits[:n].masked_fill(~allowed, float("-inf"))
        return out


_BITS = torch.arange(32, dtype=torch.int32)
