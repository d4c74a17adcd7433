"""Chat templates: rendering a conversation to text, and finding the assistant's part.

A chat template is a Jinja program shipped with a checkpoint; the model was
trained on exactly the text it produces, so we render it the way
``transformers.apply_chat_template`` does, byte for byte: a sandboxed
environment (templates are untrusted code) with ``trim_blocks`` and
``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson`` that does not
HTML-escape, and the ``raise_exception`` / ``strftime_now`` globals. Messages
have their None-valued keys dropped and ``tools``/``documents`` default to
None, as in transformers.

Assistant spans (for SFT loss masks) come from rendering prefixes of the
conversation rather than from ``{% generation %}`` tags, which few templates
carry: for assistant message ``i``, its reply starts where the rendering of
``messages[:i]`` with a generation prompt ends, and ends where the rendering
of ``messages[:i+1]`` ends, minus trailing whitespace (the separator the
template puts between turns, which the model never generates). The span so
includes the end-of-turn token (``<|im_end|>``), which the model must learn
to emit. This needs templates whose output for a prefix of the conversation
is a prefix of the output for the whole; templates that rewrite earlier
turns (e.g. dropping old reasoning) are rejected with an error. ``{%
generation %}`` tags are accepted and render their body unchanged.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

Message = dict[str, Any]

# ChatML (OpenAI, Qwen, SmolLM): every turn is <|im_start|>role\ncontent<|im_end|>\n.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


class _GenerationTag(Extension):
    """Parses ``{% generation %}...{% endgeneration %}`` and renders the body as is."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationTag]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat(
    template: str, messages: Sequence[Message], add_generation_prompt: bool = False, **variables: Any
) -> str:
    """Render a conversation with a chat template.

    Args:
        template: the Jinja source.
        messages: ``{"role": ..., "content": ...}`` dicts, oldest first.
        add_generation_prompt: append the header that opens an assistant turn.
        **variables: other template variables (``bos_token``, ``tools``, ``enable_thinking`` …).

    Returns:
        The rendered text, identical to ``transformers`` for the same inputs.
    """
    messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
    variables = {"tools": None, "documents": None, **variables}
    return _compile(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)


def assistant_spans(
    template: str, messages: Sequence[Message], add_generation_prompt: bool = False, **variables: Any
) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and locate each assistant reply in the text.

    Args:
        template: the Jinja source.
        messages: the conversation, oldest first.
        add_generation_prompt: as in :func:`render_chat`, for the full rendering.
        **variables: other template variables.

    Returns:
        The rendered text and one ``(start, end)`` character span per assistant
        message: its content through its end-of-turn marker.

    Raises:
        ValueError: the template is not prefix-stable for this conversation,
            so the replies cannot be located.
    """
    def render(msgs: Sequence[Message], gen: bool) -> str:
        return render_chat(template, msgs, add_generation_prompt=gen, **variables)

    text = render(messages, add_generation_prompt)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        head, turn = render(messages[:i], True), render(messages[: i + 1], False)
        if not (turn.startswith(head) and text.startswith(turn)):
            raise ValueError(
                f"cannot locate assistant message {i}: the chat template does not render this "
                "conversation's prefixes as prefixes of its full rendering"
            )
        spans.append((len(head), max(len(head), len(turn.rstrip()))))
    return text, spans
