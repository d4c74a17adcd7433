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
"""
from __future__ import annotations

import json
import re
from typing import Any

from llmkit.serve.protocol import Tool, ToolCall, ToolCallFunction

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)

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
