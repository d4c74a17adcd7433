"""The OpenAI-compatible HTTP server: FastAPI routes over :class:`~llmkit.serve.state.ServerState`.

``build_app(config, load)`` returns the ASGI app; ``load`` builds the
:class:`~llmkit.engine.AsyncLLMEngine` in a thread once the server listens.
Endpoints: ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (both streaming as server-sent events ending
with ``data: [DONE]``), ``GET /health`` and ``GET /metrics``, plus the chat
page at ``/``. Every request is checked completely (fields, model name,
prompt length) before it is admitted, so a refused request costs the engine
nothing; a streamed request that fails later sends an error event, then
``[DONE]``.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from llmkit.engine.async_engine import AsyncLLMEngine
from llmkit.serve import errors, tools as tool_calls
from llmkit.serve.errors import APIError
from llmkit.serve.format import Accumulator, Choice, chat_logprobs, completion_logprobs
from llmkit.serve.protocol import (AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk,
                                   ChatCompletionRequest, ChatCompletionResponse, CompletionChoice,
                                   CompletionRequest, CompletionResponse, DeltaMessage, ModelCard, ModelList,
                                   NamedToolChoice, SamplingRequest, random_id)
from llmkit.serve.state import ServeConfig, ServerState

STATIC = resources.files("llmkit.serve") / "static"


def _sse(obj: BaseModel | dict) -> str:
    data = obj.model_dump_json() if isinstance(obj, BaseModel) else json.dumps(obj)
    return f"data: {data}\n\n"


def _params(body: SamplingRequest, max_tokens: int | None, logprobs: int | None):
    try:
        return body.sampling_params(max_tokens, logprobs)
    except ValueError as e:  # SamplingParams' messages start with the field's name
        raise APIError(400, str(e), str(e).split()[0], "invalid_value") from None


async def _until_disconnect(request: Request, work: AsyncIterator) -> list:
    """Drain ``work``; if the client goes away first, close it (aborting its requests) and give up."""
    task = asyncio.ensure_future(_drain(work))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise APIError(400, "the client disconnected")
    finally:
        task.cancel()


async def _drain(work: AsyncIterator) -> list:
    async with contextlib.aclosing(work) as it:
        return [item async for item in it]


def _mask(state: ServerState, schema: dict | None, param: str):
    try:
        return state.grammar_mask(schema)
    except ValueError as e:
        raise APIError(400, str(e), param, "invalid_value") from None


def _news(o, k: int | None, index: int, ended: set[int]) -> bool:
    """Whether a continuation's delta is worth a chunk: new text, requested log-probs, or its (first) finish."""
    if index in ended:
        return False
    if o.finish_reason:
        ended.add(index)
        return True
    return bool(o.text or (k is not None and o.logprobs))


class _HeldStream(StreamingResponse):
    """A streaming response that releases its admission slot however it ends (even if it never started)."""

    def __init__(self, body: AsyncIterator[str], release: Callable[[], None]):
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _streaming(state: ServerState, events: Callable[[], AsyncIterator[str]], cost: int = 1) -> StreamingResponse:
    """An SSE response that holds ``cost`` admission slots while it streams and always ends with [DONE]."""
    slot = state.admitted(cost)
    slot.__enter__()

    async def body() -> AsyncIterator[str]:
        try:
            async for event in events():
                yield event
        except APIError as e:
            yield _sse(e.body())
        yield "data: [DONE]\n\n"

    return _HeldStream(body(), lambda: slot.__exit__(None, None, None))


def build_app(config: ServeConfig, load: Callable[[], AsyncLLMEngine]) -> FastAPI:
    """The server's ASGI app; the model loads (``load()``, in a thread) once the app starts."""
    state = ServerState(config, load)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        state.start_loading()
        yield

    app = FastAPI(title="llmkit", description="OpenAI-compatible server for llmkit models", lifespan=lifespan)
    app.state.llmkit = state
    errors.install(app)

    def authorize(request: Request) -> None:
        key = config.api_key
        if key is not None and request.headers.get("authorization", "") != f"Bearer {key}":
            raise APIError(401, "a valid API key is required (header 'Authorization: Bearer KEY')", None,
                           "invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @v1.get("/models", response_model=ModelList)
    async def models() -> ModelList:
        base, length = config.served_model_name, state.max_model_len
        return ModelList(data=[ModelCard(id=base, max_model_len=length)]
                         + [ModelCard(id=name, root=directory, parent=base, max_model_len=length)
                            for name, directory in state.lora_adapters.items()])

    @v1.post("/completions", response_model=CompletionResponse)
    async def completions(body: CompletionRequest, request: Request):
        state.ready()
        model, lora = state.check_model(body.model)
        params = _params(body, body.max_tokens, body.logprobs)
        if body.echo and body.logprobs is not None:
            raise APIError(400, "echo with logprobs is not supported: the server does not compute the prompt's "
                           "log-probabilities", "echo", "unsupported")
        prompts = body.prompts()
        if not prompts:
            raise APIError(400, "prompt: give at least one prompt", "prompt", "invalid_value")
        for p in prompts:
            state.check_request(p, params, "prompt", lora)
        rid, tokenizer, k = random_id("cmpl"), state.engine.engine.tokenizer, body.logprobs
        acc = Accumulator(body.n)
        # echo: each choice's text starts with its prompt's (ids are decoded)
        echoes = [(p if isinstance(p, str) else tokenizer.decode(p)) if body.echo else "" for p in prompts]

        def logprobs(rows, offset=0):
            return None if k is None else completion_logprobs(tokenizer, rows, k, offset)

        if body.stream:
            async def events() -> AsyncIterator[str]:
                ended: set[int] = set()
                echoed: set[int] = set()
                async for i, delta in state.stream(prompts, params, rid, lora_name=lora):
                    for index, o in acc.add(i, delta):
                        if _news(o, k, index, ended) or (body.echo and index not in echoed):
                            text = o.text if index in echoed else echoes[i] + o.text
                            echoed.add(index)
                            offset = len(acc.choices[index].text) - len(o.text)
                            c = CompletionChoice(index=index, text=text, finish_reason=o.finish_reason,
                                                 logprobs=logprobs(o.logprobs or [], offset))
                            yield _sse(CompletionResponse(id=rid, model=model, choices=[c]))
                if body.include_usage:
                    yield _sse(CompletionResponse(id=rid, model=model, choices=[], usage=acc.usage()))

            return _streaming(state, events, len(prompts))
        with state.admitted(len(prompts)):
            for i, delta in await _until_disconnect(request, state.stream(prompts, params, rid, lora_name=lora)):
                acc.add(i, delta)
        choices = [CompletionChoice(index=i, text=echoes[i // body.n] + c.text, finish_reason=c.finish_reason,
                                    logprobs=logprobs(c.logprobs)) for i, c in acc.ordered()]
        return CompletionResponse(id=rid, model=model, choices=choices, usage=acc.usage())

    @v1.post("/chat/completions", response_model=ChatCompletionResponse)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        engine = state.ready()
        model, lora = state.check_model(body.model)
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs", "invalid_value")
        k = (body.top_logprobs or 0) if body.logprobs else None
        params = _params(body, body.max_completion_tokens or body.max_tokens, k)
        tokenizer = engine.engine.tokenizer
        messages = [m.for_template() for m in body.messages]
        tools = body.tools if body.tools and body.tool_choice != "none" else None
        forced = tools is not None and body.tool_choice not in (None, "auto")
        if body.tool_choice not in (None, "none", "auto") and not body.tools:
            raise APIError(400, "tool_choice needs tools", "tool_choice", "invalid_value")
        variables = {}
        if tools:
            messages, variables = tool_calls.inject(messages, tools, tokenizer.chat_template or "")
        processor = None
        if forced:
            name = body.tool_choice.function.name if isinstance(body.tool_choice, NamedToolChoice) else None
            try:
                schema = tool_calls.call_schema(tools, name)
            except ValueError as e:
                raise APIError(400, str(e), "tool_choice", "invalid_value") from None
            processor = _mask(state, schema, "tools")
        elif body.response_format is not None and body.response_format.type != "text":
            fmt = body.response_format
            if fmt.type == "json_schema" and not isinstance((fmt.json_schema or {}).get("schema"), dict):
                raise APIError(400, "response_format.json_schema.schema must be a JSON schema object",
                               "response_format.json_schema", "invalid_value")
            processor = _mask(state, fmt.json_schema["schema"] if fmt.type == "json_schema" else None,
                              "response_format")
        try:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **variables)
        except (ValueError, jinja2.TemplateError) as e:
            raise APIError(400, f"messages: the chat template failed: {e}", "messages", "invalid_value") from None
        state.check_request(ids, params, "messages", lora)
        rid, acc = random_id("chatcmpl"), Accumulator(body.n)

        def logprobs(rows):
            return None if k is None else chat_logprobs(tokenizer, rows, k)

        def reply(c: Choice) -> tuple[AssistantMessage, str | None]:
            if not tools:
                return AssistantMessage(content=c.text), c.finish_reason
            content, calls = tool_calls.parse(c.text, forced)
            return AssistantMessage(content=content, tool_calls=calls or None), "tool_calls" if calls else c.finish_reason

        if body.stream:
            def chunk(choices, usage=None):
                extra = {"usage": usage} if body.include_usage else {}
                return _sse(ChatCompletionChunk(id=rid, model=model, choices=choices, **extra))

            async def events() -> AsyncIterator[str]:
                started: set[int] = set()
                ended: set[int] = set()
                parsers: dict[int, tool_calls.ToolCallStream] = {}
                async for _, delta in state.stream([ids], params, rid, processor, lora):
                    for index, o in acc.add(0, delta):
                        if index not in started:
                            started.add(index)
                            yield chunk([ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))])
                        if tools and index not in ended:  # content, then tool calls, as the parser finds them
                            parser = parsers.setdefault(index, tool_calls.ToolCallStream(forced))
                            content, calls = parser.feed(o.text, o.finish_reason is not None)
                            reason = o.finish_reason and reply(acc.choices[index])[1]  # as the non-streamed reply
                            if reason:
                                ended.add(index)
                            if content or calls or reason or (k is not None and o.logprobs):
                                yield chunk([ChatChunkChoice(index=index, delta=DeltaMessage(
                                    content=content or None, tool_calls=calls or None),
                                    logprobs=logprobs(o.logprobs or []), finish_reason=reason)])
                        elif not tools and _news(o, k, index, ended):
                            yield chunk([ChatChunkChoice(index=index, delta=DeltaMessage(content=o.text or None),
                                                         logprobs=logprobs(o.logprobs or []),
                                                         finish_reason=o.finish_reason)])
                if body.include_usage:
                    yield chunk([], acc.usage())

            return _streaming(state, events)
        with state.admitted():
            for _, delta in await _until_disconnect(request, state.stream([ids], params, rid, processor, lora)):
                acc.add(0, delta)
        choices = [ChatChoice(index=i, message=message, finish_reason=reason, logprobs=logprobs(c.logprobs))
                   for i, c in acc.ordered() for message, reason in [reply(c)]]
        return ChatCompletionResponse(id=rid, model=model, choices=choices, usage=acc.usage())

    app.include_router(v1)

    @app.get("/health")
    async def health() -> Response:
        if state.engine is None:
            return APIError(503, state.load_error or "loading").response()
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if STATIC.is_dir():
        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(str(STATIC / "index.html"))

        app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
