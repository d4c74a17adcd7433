"""Structured output and tool calls through the server: every reply parses and matches its schema (a random model)."""
from __future__ import annotations

import json

import openai
import pytest

from llmkit.serve.protocol import Tool
from llmkit.serve.tools import SYSTEM, ToolCallStream, call_schema, inject, parse

from .conftest import MODEL

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]},
                                           "size": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["ok", "color", "size"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                          "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
    "additionalProperties": False}}}


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def streamed_calls(chunks) -> list[dict]:
    """Tool calls put together from their stream deltas, as OpenAI clients do (by index)."""
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for d in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            call["id"] = d.id or call["id"]
            call["name"] = d.function.name or call["name"]
            call["arguments"] += d.function.arguments or ""
    return [calls[i] for i in sorted(calls)]


def ask(client, **kwargs):
    kwargs = {"max_tokens": 120, "temperature": 1.0, "seed": 3, **kwargs}
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello world."}],
                                          **kwargs)


def test_json_schema(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}}
    out = ask(client, response_format=fmt, n=3)
    for c in out.choices:  # each continuation follows its own grammar state
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.message.content), SCHEMA)
    stream = ask(client, response_format=fmt, stream=True)
    jsonschema.validate(json.loads("".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)), SCHEMA)


def test_json_object(client):
    out = ask(client, response_format={"type": "json_object"}, max_tokens=200, temperature=0.7)
    if out.choices[0].finish_reason == "stop":  # a random model may still be inside the object at max_tokens
        assert isinstance(json.loads(out.choices[0].message.content), dict)
    assert out.choices[0].message.content.startswith("{")


def test_bad_schema_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}})
    assert e.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    assert e.value.body["param"] == "response_format.json_schema"


@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_call(client, stream):
    kwargs = dict(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    if not stream:
        choice = ask(client, **kwargs).choices[0]
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                 for c in choice.message.tool_calls]
        reason = choice.finish_reason
    else:
        chunks = [c for c in ask(client, stream=True, **kwargs) if c.choices]
        calls, reason = streamed_calls(chunks), chunks[-1].choices[0].finish_reason
        deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
        assert len(deltas) > 2  # the id and name, then the arguments in pieces as they were generated
        assert deltas[0].id and deltas[0].function.name == "get_weather" and not deltas[0].function.arguments
    assert reason == "tool_calls" and len(calls) == 1
    assert calls[0]["name"] == "get_weather" and calls[0]["id"]
    assert json.loads(calls[0]["arguments"])["city"] in ("Paris", "Oslo")


def test_auto_tools_stream_content_as_it_comes(client):
    """With tools but no call in the reply (a random model), content streams in pieces and equals the reply."""
    kwargs = dict(tools=[WEATHER], temperature=0, max_tokens=24)
    whole = ask(client, **kwargs).choices[0]
    chunks = [c for c in ask(client, stream=True, **kwargs) if c.choices]
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 2 and "".join(pieces) == whole.message.content
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason


@pytest.mark.parametrize("piece", [1, 2, 5, 1000])
def test_tool_call_stream_equals_parse(piece):
    """However the text is cut into deltas, the streamed content and calls are what parse() finds in the whole."""
    text = ('Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": {"name": "Oslo"}}}\n'
            '</tool_call>\n<tool_call>{"arguments": {"zone": "UTC"}, "name": "get_time"}</tool_call>')
    stream, content, calls = ToolCallStream(forced=False), "", {}
    for i in range(0, len(text), piece):
        c, deltas = stream.feed(text[i:i + piece], final=i + piece >= len(text))
        content += c
        for d in deltas:
            call = calls.setdefault(d["index"], {"name": None, "arguments": ""})
            call["name"] = d["function"].get("name") or call["name"]
            call["arguments"] += d["function"]["arguments"]
            assert not (d["function"].get("name") and "id" not in d)  # the name comes with the id, once
    want_content, want = parse(text, forced=False)
    assert content == want_content
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        (w.function.name, json.loads(w.function.arguments)) for w in want]
    plain = ToolCallStream(forced=False)  # no call: the text as it is, a partial tag held back meanwhile
    assert plain.feed("Hi <tool", final=False) == ("Hi", [])
    assert plain.feed("box> there", final=True) == (" <toolbox> there", [])


def test_required_tool_call_picks_one_of_the_tools(client):
    out = ask(client, tools=[WEATHER, TIME], tool_choice="required")
    (call,) = out.choices[0].message.tool_calls
    args = json.loads(call.function.arguments)
    assert (call.function.name, list(args)) in [("get_weather", ["city"]), ("get_time", ["zone"])]


def test_tool_choice_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert e.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError):
        ask(client, tool_choice="required")


def test_parse_calls_out_of_text():
    text = ('Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>\n'
            '<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>')
    content, calls = parse(text, forced=False)
    assert content == "Let me check."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Oslo"}), ("get_time", {"zone": "UTC"})]
    assert parse("no calls here <tool_call>{broken</tool_call>", forced=False)[1] == []
    assert parse('{"name": "get_time", "arguments": {"zone": "CET"}}', forced=True)[0] is None
    assert parse('{"name": "get_ti', forced=True) == ('{"name": "get_ti', [])  # cut by max_tokens


def test_tools_reach_the_prompt():
    tools = [Tool(**WEATHER)]
    msgs, variables = inject([{"role": "user", "content": "hi"}], tools, "{{ messages }}")
    assert variables == {} and msgs[0]["role"] == "system" and "get_weather" in msgs[0]["content"]
    assert msgs[0]["content"].startswith(SYSTEM.split("{")[0])
    msgs, variables = inject([{"role": "user", "content": "hi"}], tools, "{% if tools %}{{ tools }}{% endif %}")
    assert len(msgs) == 1 and variables["tools"][0]["function"]["name"] == "get_weather"
    assert call_schema(tools, None)["properties"]["name"] == {"const": "get_weather"}
