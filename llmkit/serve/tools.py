"""Tool calling: tools rendered into the prompt, the model's calls parsed back into OpenAI ``tool_calls``.

A chat template that knows tools (it reads the ``tools`` variable, as Qwen's,
Llama 3.1's and Hermes' do) renders them itself. Otherwise the tools are
described in the system message in the Hermes convention that most
tool-tuned models follow: a JSON list of function signatures, and calls written
as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

``tool_choice``: ``"none"`` hides the tools; ``"auto"`` (the default when tools
are given) lets the model answer or call, and calls are parsed out of its text;
``"required"`` and a named function constrain decoding (see
:mod:`llmkit.serve.structured`) to one call object, so the call is always
well formed.

Streaming (:class:`ToolCallStream`): the reply's text is re-split on every
delta, so the stream is a pure function of the text so far. Content streams
until a ``<tool_call>`` opens (a possibly partial tag at the end is held
back); then each call is sent OpenAI's way: one delta with its index, id and
function name, then argument fragments as the model writes them. Fragments
are cut from the raw text after ``"arguments":`` (holding back a final ``}``,
which may close the call object rather than the arguments), so they join to
the arguments' JSON text; a call written in another form (arguments first, or
``"parameters"``) is sent whole when its block closes.
"""
from __future__ import annotations

import json
import re
from typing import Any

from llmkit.serve.protocol import Tool, ToolCall, ToolCallFunction, random_id

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')  # up to the arguments
_CLOSING = re.compile(r"\s*\}?\s*$")  # what may be the call object's own end

SYSTEM = ("You can call functions. Their signatures, as JSON:\n{tools}\n"
          "To call a function, answer with <tool_call>{{\"name\": NAME, \"arguments\": {{...}}}}</tool_call> "
          "(one per call) and nothing else.")


def inject(messages: list[dict[str, Any]], tools: list[Tool], template: str) -> tuple[list[dict[str, Any]], dict]:
    """Messages and template variables that show ``tools`` to the model (see the module docstring)."""
    specs = [t.model_dump(exclude_none=True) for t in tools]
    if "tools" in template:
        return messages, {"tools": specs}
    note = SYSTEM.format(tools=json.dumps([s["function"] for s in specs], ensure_ascii=False))
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{note}"}, *messages[1:]], {}
    return [{"role": "system", "content": note}, *messages], {}


def call_schema(tools: list[Tool], name: str | None) -> dict[str, Any]:
    """JSON schema of one call object: of the named function, or of any of ``tools``."""
    def one(t: Tool) -> dict[str, Any]:
        params = t.function.parameters or {"type": "object"}
        return {"type": "object", "properties": {"name": {"const": t.function.name}, "arguments": params},
                "required": ["name", "arguments"], "additionalProperties": False}

    chosen = [t for t in tools if name is None or t.function.name == name]
    if not chosen:
        raise ValueError(f"tool_choice names {name!r}, which is not among the tools")
    return one(chosen[0]) if len(chosen) == 1 else {"anyOf": [one(t) for t in chosen]}


def _call(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    return ToolCall(function=ToolCallFunction(name=obj["name"], arguments=json.dumps(args, ensure_ascii=False)))


def parse(text: str, forced: bool) -> tuple[str | None, list[ToolCall]]:
    """``(content, tool_calls)`` of a reply: with ``forced``, the whole text is one call object."""
    if forced:
        try:
            call = _call(json.loads(text))
        except json.JSONDecodeError:
            call = None  # cut short by max_tokens: return the text
        return (None, [call]) if call else (text, [])
    calls = []
    for block in _CALL.findall(text):
        try:
            call = _call(json.loads(block))
        except json.JSONDecodeError:
            call = None
        if call is not None:
            calls.append(call)
    if not calls:
        return text, []
    rest = _CALL.sub("", text).strip()
    return rest or None, calls


def _held(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that could be the start of ``tag`` (held back until it is known)."""
    return next((n for n in range(min(len(tag) - 1, len(text)), 0, -1) if text.endswith(tag[:n])), 0)


class ToolCallStream:
    """A streamed reply with tools, as OpenAI chat deltas (see the module docstring).

    Args:
        forced: the whole reply is one call object (``tool_choice`` required or named).
    """

    def __init__(self, forced: bool):
        self.forced = forced
        self.text = ""
        self.content_sent = 0  # characters of content sent
        self.calls: dict[int, dict[str, Any]] = {}  # block number -> {"index", "sent": argument chars sent}

    def feed(self, delta: str, final: bool) -> tuple[str, list[dict[str, Any]]]:
        """Add the reply's next text (``final``: it is complete); returns (content delta, tool_calls deltas)."""
        self.text += delta
        content, blocks = self._split(final)
        out_content = content[self.content_sent:] if len(content) > self.content_sent else ""
        self.content_sent = max(self.content_sent, len(content))
        deltas = []
        for number, (body, complete) in enumerate(blocks):
            deltas += self._call_deltas(number, body, complete)
        return out_content, deltas

    def _split(self, final: bool) -> tuple[str, list[tuple[str, bool]]]:
        """(content that can be sent, [(call block body, whether it is complete)])."""
        text = self.text
        if self.forced:
            return "", [(text, final)]
        start = first = text.find(_OPEN)
        if first < 0:  # no call (yet): all the text, but a tag's possible start and trailing spaces wait
            return (text, []) if final else (text[:len(text) - _held(text, _OPEN)].rstrip(), [])
        blocks = []
        while start >= 0:
            body_start = start + len(_OPEN)
            end = text.find(_CLOSE, body_start)
            if end < 0:  # still being written (or cut short: then parsed as it is)
                body = text[body_start:]
                blocks.append((body if final else body[:len(body) - _held(body, _CLOSE)], final))
                break
            blocks.append((text[body_start:end], True))
            start = text.find(_OPEN, end + len(_CLOSE))
        return text[:first].rstrip(), blocks

    def _call_deltas(self, number: int, body: str, complete: bool) -> list[dict[str, Any]]:
        head = _HEAD.match(body)
        name, args = None, None
        if head is not None:
            name = json.loads(head.group(1))
            args = body[head.end():]
            args = args[:len(args) - len(_CLOSING.search(args).group())]
        if complete:
            try:
                call = _call(json.loads(body))
            except json.JSONDecodeError:
                call = None
            if call is None:
                return []
            name = call.function.name
            if args is None or _loads(args) != json.loads(call.function.arguments):
                args = call.function.arguments
        if name is None:
            return []
        out = []
        state = self.calls.get(number)
        if state is None:
            state = self.calls[number] = {"index": len(self.calls), "sent": 0}
            out.append({"index": state["index"], "id": random_id("call"), "type": "function",
                        "function": {"name": name, "arguments": ""}})
        if args and len(args) > state["sent"]:
            out.append({"index": state["index"], "function": {"arguments": args[state["sent"]:]}})
            state["sent"] = len(args)
        return out


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None
