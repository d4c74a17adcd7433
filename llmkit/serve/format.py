"""Engine outputs -> OpenAI response objects: accumulated choices, usage, and log-probabilities.

The engine reports each token's log-probability as ``{id: logprob}`` with the
chosen id first and up to ``k`` alternatives; OpenAI's two endpoints spell
this differently (chat: a list of entries with ``top_logprobs``; completions:
parallel lists ``tokens`` / ``token_logprobs`` / ``top_logprobs`` /
``text_offset``), so both are built here from the same record. A token's
string is its own decoding, which for byte-level BPE can be part of a
character; ``bytes`` carries its exact UTF-8 bytes where it decodes cleanly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from llmkit.engine.outputs import CompletionOutput, RequestOutput
from llmkit.serve.protocol import (ChatLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob, Usage)
from llmkit.tokenizer import Tokenizer


@dataclass
class Choice:
    """One continuation, accumulated from its deltas."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, o: CompletionOutput) -> None:
        self.text += o.text
        self.token_ids += o.token_ids
        self.logprobs += o.logprobs or []
        self.finish_reason = o.finish_reason


@dataclass
class Accumulator:
    """Every choice of one HTTP request, keyed ``prompt index * n + continuation index`` (OpenAI's order)."""

    n: int
    choices: dict[int, Choice] = field(default_factory=dict)
    prompt_tokens: dict[int, int] = field(default_factory=dict)

    def add(self, prompt_index: int, delta: RequestOutput) -> list[tuple[int, CompletionOutput]]:
        """Record a delta; returns its outputs with their choice indices."""
        self.prompt_tokens[prompt_index] = len(delta.prompt_token_ids)
        out = []
        for o in delta.outputs:
            index = prompt_index * self.n + o.index
            self.choices.setdefault(index, Choice()).add(o)
            out.append((index, o))
        return out

    def usage(self) -> Usage:
        prompt = sum(self.prompt_tokens.values())
        completion = sum(len(c.token_ids) for c in self.choices.values())
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def ordered(self) -> list[tuple[int, Choice]]:
        return sorted(self.choices.items())


def _token(tokenizer: Tokenizer, token_id: int) -> tuple[str, list[int]]:
    text = tokenizer.decode([token_id])
    return text, list(text.encode("utf-8", errors="replace"))


def _top(row: dict[int, float], k: int) -> list[tuple[int, float]]:
    return sorted(row.items(), key=lambda kv: -kv[1])[:k]


def chat_logprobs(tokenizer: Tokenizer, rows: list[dict[int, float]], k: int) -> ChatLogprobs:
    content = []
    for row in rows:
        chosen, lp = next(iter(row.items()))
        text, raw = _token(tokenizer, chosen)
        top = [TopLogprob(token=t, logprob=v, bytes=b) for i, v in _top(row, k) for t, b in [_token(tokenizer, i)]]
        content.append(TokenLogprob(token=text, logprob=lp, bytes=raw, top_logprobs=top))
    return ChatLogprobs(content=content)


def completion_logprobs(tokenizer: Tokenizer, rows: list[dict[int, float]], k: int, offset: int = 0
                        ) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for row in rows:
        chosen, lp = next(iter(row.items()))
        text = _token(tokenizer, chosen)[0]
        out.tokens.append(text)
        out.token_logprobs.append(lp)
        out.top_logprobs.append({_token(tokenizer, i)[0]: v for i, v in _top(row, k)} if k else None)
        out.text_offset.append(offset)
        offset += len(text)
    return out
