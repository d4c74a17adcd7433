"""The server's state around one :class:`~llmkit.engine.AsyncLLMEngine`: loading, admission, and request streams.

The model loads in a worker thread after the server starts listening, so
``/health`` answers 503 while it loads and 200 after. Admission is bounded:
the scheduler runs ``max_num_seqs`` sequences at once, and at most
``max_queue`` more requests may wait behind them; beyond that a request is
refused at once with 429 and ``Retry-After``, so a burst never grows an
unbounded queue. :meth:`ServerState.stream` runs the prompts of one HTTP
request as engine requests and merges their deltas; closing it (the client went
away, or the response is complete) aborts whatever still runs, which frees its
KV blocks at the next step boundary.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmkit.engine.async_engine import AsyncLLMEngine
from llmkit.engine.outputs import RequestOutput
from llmkit.generate.sampling import SamplingParams
from llmkit.serve.errors import APIError
from llmkit.serve.metrics import Metrics

if TYPE_CHECKING:
    from llmkit.serve.structured import GrammarMask

log = logging.getLogger("llmkit.serve")


@dataclass(frozen=True)
class ServeConfig:
    """What the server exposes, and its admission bound."""

    served_model_name: str  # the name clients put in "model"
    api_key: str | None = None  # when set, /v1/* requires "Authorization: Bearer KEY"
    max_queue: int = 256  # requests that may wait beyond the running batch before 429
    retry_after_s: int = 1  # the Retry-After of a 429
    aliases: tuple[str, ...] = field(default=())  # other accepted model names (e.g. the path it was loaded from)


class ServerState:
    """The engine (once loaded) and the bookkeeping the endpoints share."""

    def __init__(self, config: ServeConfig, load: Callable[[], AsyncLLMEngine]):
        self.config = config
        self._load = load
        self.engine: AsyncLLMEngine | None = None
        self.load_error: str | None = None
        self.in_flight = 0
        self._grammar_tokenizer = None  # built on the first constrained request
        self.metrics = Metrics(lambda: None if self.engine is None else self.engine.engine.stats())

    def start_loading(self) -> threading.Thread:
        def load() -> None:
            try:
                self.engine = self._load()
                log.info("model %s loaded", self.config.served_model_name)
            except Exception as e:  # noqa: BLE001 - reported by /health and every request
                self.load_error = f"{type(e).__name__}: {e}"
                log.error("loading the model failed: %s", self.load_error)

        thread = threading.Thread(target=load, name="llmkit-load", daemon=True)
        thread.start()
        return thread

    # ----- checks -----
    def ready(self) -> AsyncLLMEngine:
        if self.engine is None:
            message = f"the model failed to load: {self.load_error}" if self.load_error else "the model is loading"
            raise APIError(503, message, code="model_not_ready", headers={"Retry-After": "5"})
        return self.engine

    @property
    def lora_adapters(self) -> dict[str, str]:
        """{name: directory} of the LoRA adapters served beside the base model (none before it loads)."""
        return {} if self.engine is None else dict(self.engine.engine.loras.directories)

    def check_model(self, name: str | None) -> tuple[str, str | None]:
        """(the name to answer with, the LoRA adapter or None for the base) of a request's ``model``;
        404 for an unknown one."""
        served = self.config.served_model_name
        if name is None or name == served or name in self.config.aliases:
            return served, None
        if name in self.lora_adapters:
            return name, name
        known = ", ".join(repr(n) for n in [served, *self.lora_adapters])
        raise APIError(404, f"the model {name!r} does not exist; this server serves {known}", "model",
                       "model_not_found")

    @property
    def max_model_len(self) -> int | None:
        return None if self.engine is None else self.engine.engine.max_seq_len

    def check_request(self, prompt: Any, params: SamplingParams, param: str, lora_name: str | None = None) -> None:
        """400 for a prompt the engine refuses (too long, empty, bad ids), naming the request field."""
        try:
            self.ready().check(prompt, params, lora_name)
        except ValueError as e:
            code = "context_length_exceeded" if "context" in str(e) or "KV pool" in str(e) else "invalid_value"
            raise APIError(400, str(e), param, code) from None

    @contextlib.contextmanager
    def admitted(self, cost: int = 1):
        """Hold ``cost`` admission slots (one per engine request) for the ``with``; 429 when too few are left."""
        engine = self.ready()
        limit = engine.engine.scheduler.max_num_seqs + self.config.max_queue
        if cost > limit:
            raise APIError(400, f"prompt: {cost} prompts in one request, but the server admits {limit} at once",
                           "prompt", "invalid_value")
        if self.in_flight + cost > limit:
            raise APIError(429, f"the server is overloaded ({self.in_flight} requests in flight): retry later",
                           code="overloaded", headers={"Retry-After": str(self.config.retry_after_s)})
        self.in_flight += cost
        try:
            yield
        finally:
            self.in_flight -= cost

    # ----- generation -----
    def grammar_mask(self, schema: dict[str, Any] | None) -> GrammarMask:
        """A logits processor constraining a request to JSON matching ``schema`` (None = any object).

        Raises:
            APIError: 400 for a schema that does not compile, or when the tokenizer cannot be constrained.
        """
        try:
            from llmkit.serve.structured import GrammarMask, GrammarTokenizer, json_grammar

            if self._grammar_tokenizer is None:
                self._grammar_tokenizer = GrammarTokenizer(self.ready().engine.tokenizer)
            return GrammarMask(self._grammar_tokenizer, json_grammar(schema))
        except ImportError:
            raise APIError(400, "structured output needs the llguidance package on the server", "response_format",
                           "unsupported") from None

    async def stream(self, prompts: list[Any], params: SamplingParams, request_id: str,
                     logits_processor: Callable | None = None,
                     lora_name: str | None = None) -> AsyncIterator[tuple[int, RequestOutput]]:
        """``(prompt index, delta)`` of every prompt's engine request (under ``lora_name``), as they arrive.

        Raises:
            APIError: 500 if the engine failed mid-request.
        """
        engine = self.ready()
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, prompt: Any) -> None:
            observe = self.metrics.track()
            try:
                gen = engine.generate(prompt, params, f"{request_id}-{i}", logits_processor, lora_name)
                async with contextlib.aclosing(gen):
                    async for delta in gen:
                        observe(delta)
                        queue.put_nowait((i, delta))
                queue.put_nowait((i, None))
            except Exception as e:  # noqa: BLE001 - handed to the consumer
                queue.put_nowait((i, e))

        tasks = [asyncio.create_task(pump(i, p)) for i, p in enumerate(prompts)]
        try:
            done = 0
            while done < len(tasks):
                i, item = await queue.get()
                if item is None:
                    done += 1
                elif isinstance(item, ValueError):
                    raise APIError(400, str(item))
                elif isinstance(item, Exception):
                    raise APIError(500, f"generation failed: {item}")
                else:
                    yield i, item
        finally:  # closing early (a client went away) cancels the pumps, whose generators abort their requests
            for t in tasks:
                t.cancel()
