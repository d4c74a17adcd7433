"""`AsyncLLMEngine`: the engine behind an asyncio server, streaming each request's new tokens as they come.

One background task runs the step loop; each step itself runs in one
dedicated worker thread, so the event loop keeps serving connections
meanwhile. Always the same thread: torch's CPU thread pool (OpenMP) belongs to
the thread that calls it, and with steps hopping between ``asyncio.to_thread``'s
workers a batch-1 step of SmolLM2 served on 2 cores took 47 ms instead of 27. Requests are
checked at once (a bad one raises in the caller, before anything is queued),
then handed to the loop, which alone touches the engine's state between
steps. :meth:`AsyncLLMEngine.generate` is an async iterator of deltas:
leaving it early (the client went away) aborts the request and frees its
blocks.
"""
from __future__ import annotations

import asyncio
import copy
from concurrent.futures import ThreadPoolExecutor
from collections.abc import AsyncIterator
from typing import Any

from llmkit.engine.llm_engine import LLMEngine, LogitsProcessor
from llmkit.engine.outputs import RequestOutput
from llmkit.generate.sampling import SamplingParams


class AsyncLLMEngine:
    """Wraps an :class:`LLMEngine` for concurrent streaming requests."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._streams: dict[str, asyncio.Queue] = {}
        self._pending: list[tuple[str, Any, SamplingParams, LogitsProcessor | None, str | None]] = []
        self._aborts: list[str] = []
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._stepper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmkit-engine-step")

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wake = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        engine = self.engine
        while True:
            for request_id in self._aborts:  # the final output (finish reason "abort") to a consumer still there
                final, queue = engine.abort_request(request_id), self._streams.pop(request_id, None)
                if final is not None and queue is not None:
                    queue.put_nowait(final)
            self._aborts.clear()
            for request_id, prompt, params, processor, lora_name in self._pending:
                if request_id not in self._streams:  # its consumer left before it was queued
                    continue
                try:
                    engine.add_request(request_id, prompt, params, logits_processor=processor, lora_name=lora_name)
                except ValueError as e:
                    self._streams.pop(request_id).put_nowait(e)
            self._pending.clear()
            if not engine.has_unfinished_requests():
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                outputs = await asyncio.get_running_loop().run_in_executor(self._stepper, engine.step)
            except Exception as e:  # noqa: BLE001 - a failed step fails its requests, not the server
                for request_id in list(self._streams):
                    engine.abort_request(request_id)
                    self._streams.pop(request_id).put_nowait(RuntimeError(f"engine step failed: {e}"))
                continue
            for out in outputs:
                queue = self._streams.get(out.request_id)
                if queue is not None:
                    queue.put_nowait(out)
                    if out.finished:
                        del self._streams[out.request_id]

    def check(self, prompt: Any, params: SamplingParams | None = None, lora_name: str | None = None) -> None:
        """Raise ValueError for a request the engine would refuse (see ``LLMEngine.check_request``)."""
        self.engine.check_request(prompt, params, lora_name)

    async def generate(self, prompt: Any, params: SamplingParams | None, request_id: str,
                       logits_processor: LogitsProcessor | None = None,
                       lora_name: str | None = None) -> AsyncIterator[RequestOutput]:
        """Stream a request: each item holds, per continuation, the text and tokens new since the last.

        ``logits_processor``, ``lora_name``: see :meth:`LLMEngine.add_request`.

        Raises:
            ValueError: a bad request (before anything is yielded).
        """
        params = params or SamplingParams()
        self.engine.check_request(prompt, params, lora_name)
        if request_id in self._streams or request_id in self.engine.tracks:
            raise ValueError(f"request id {request_id!r} is already in use")
        self._ensure_loop()
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = queue
        self._pending.append((request_id, prompt, params, logits_processor, lora_name))
        self._wake.set()
        sent: dict[int, tuple[int, int, int]] = {}  # per continuation: chars, tokens, logprobs already yielded
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                finished = item.finished
                yield _delta(item, sent)
        finally:
            if not finished:  # the consumer left early: stop the request and free its blocks
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Abort a request at the next step boundary."""
        self._aborts.append(request_id)
        if self._wake is not None:
            self._wake.set()


def _delta(out: RequestOutput, sent: dict[int, tuple[int, int, int]]) -> RequestOutput:
    """``out`` with each continuation cut to what is new since the previous call."""
    delta = copy.copy(out)
    delta.outputs = []
    for o in out.outputs:
        chars, tokens, lps = sent.get(o.index, (0, 0, 0))
        d = copy.copy(o)
        d.text, d.token_ids = o.text[chars:], o.token_ids[tokens:]
        d.logprobs = None if o.logprobs is None else o.logprobs[lps:]
        sent[o.index] = (len(o.text), len(o.token_ids), lps if o.logprobs is None else len(o.logprobs))
        delta.outputs.append(d)
    return delta
