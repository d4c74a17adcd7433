"""The two kinds of model a long-document method can call: an llmkit model, or an OpenAI-compatible endpoint.

Both offer the same three things: ``context`` (tokens the model can read
and write at once), ``count_tokens(text)`` and ``complete(prompts,
max_new_tokens) -> texts``, which runs a list of independent prompts (the
"map" step of map-reduce) as parallel as the backend allows: a local model
decodes them as one left-padded batch through :func:`llmkit.generate.generate`;
an endpoint gets concurrent HTTP requests. Prompts are user messages,
rendered with the chat template when the model has one.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from llmkit.generate.sampling import SamplingParams
from llmkit.model import CausalLM
from llmkit.tokenizer import Tokenizer


class LLM(Protocol):
    context: int

    def count_tokens(self, text: str) -> int: ...

    def complete(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]: ...


class LocalLLM:
    """An llmkit model and its tokenizer; prompts are decoded ``batch_size`` at a time."""

    def __init__(self, model: CausalLM, tokenizer: Tokenizer, sampling: SamplingParams | None = None,
                 batch_size: int = 8):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.sampling = sampling or SamplingParams()
        self.context = model.cfg.max_seq_len

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def complete(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        from llmkit.generate import generate

        chat = bool(self.tokenizer.chat_template)
        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            batch = [[{"role": "user", "content": p}] if chat else p for p in prompts[i:i + self.batch_size]]
            out += generate(self.model, self.tokenizer, batch, sampling=self.sampling,
                            max_new_tokens=max_new_tokens).texts
        return [t.strip() for t in out]


class OpenAIChat:
    """An OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp server, OpenAI ...).

    Args:
        base_url: e.g. ``http://localhost:8000/v1``.
        model: the model name the server expects.
        api_key: sent as a bearer token when given.
        context: the model's context in tokens (for chunk budgeting).
        tokenizer: counts tokens exactly; without one, 4 characters count as a token (an estimate).
        workers: concurrent requests.
        timeout: seconds per request.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, context: int = 4096,
                 tokenizer: Tokenizer | None = None, workers: int = 4, timeout: float = 120.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.context = model, api_key, context
        self.tokenizer, self.workers, self.timeout = tokenizer, workers, timeout

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        return (len(text) + 3) // 4

    def _one(self, prompt: str, max_new_tokens: int) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": max_new_tokens, "temperature": 0}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.load(response)
            return reply["choices"][0]["message"]["content"].strip()
        except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError) as e:
            raise RuntimeError(f"endpoint {self.url} failed: {e}") from e

    def complete(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(lambda p: self._one(p, max_new_tokens), prompts))
