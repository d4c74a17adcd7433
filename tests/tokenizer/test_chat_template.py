"""Chat templates: rendering parity with transformers, and assistant masks."""
from __future__ import annotations

import jinja2
import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import models

from llmkit.tokenizer import CHATML_TEMPLATE, Tokenizer

SYSTEM = {"role": "system", "content": "You are terse. Answer in one line."}
CONVERSATION = [
    {"role": "user", "content": "Hi! Qu'est-ce que c'est, 日本語? 🤗"},
    {"role": "assistant", "content": "A greeting.\nIn French & Japanese."},
    {"role": "user", "content": "  2 + 2 =  "},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "<b>thanks</b>"},
]

# Exercises the environment: tojson (no HTML escaping, kwargs), namespace,
# loop controls, raise_exception, bos/eos variables, {% generation %}, extra kwargs.
FEATURES_TEMPLATE = """{{ bos_token }}{% set ns = namespace(n=0) %}
{% for m in messages %}
  {% if m.role not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}
  {% set ns.n = ns.n + 1 %}
  {% if m.role == 'assistant' %}
[A]{% generation %}{{ m.content | trim }}{{ eos_token }}{% endgeneration %}
  {% else %}
[{{ m.role }} {{ ns.n }}] {{ m | tojson }} {{ m | tojson(indent=2, sort_keys=true) }}
  {% endif %}
  {% if loop.index > 10 %}{% break %}{% endif %}
{% endfor %}
{% if tools %}TOOLS {{ tools | tojson }}{% endif %}
{% if greeting is defined %}{{ greeting }}{% endif %}
{% if add_generation_prompt %}[A]{% endif %}"""


def _conversations() -> list[list[dict]]:
    return [CONVERSATION, [SYSTEM, *CONVERSATION], CONVERSATION[:1], [SYSTEM, *CONVERSATION[:2]]]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_smollm2_template_matches_transformers(
    smollm2: Tokenizer, hf_smollm2, hf_smollm2_digits, add_generation_prompt: bool
) -> None:
    for messages in _conversations():
        text = smollm2.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        assert text == hf_smollm2.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )
        ids = smollm2.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
        assert ids == hf_smollm2_digits.apply_chat_template(  # see test_gguf_tokenizer
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
        )


def test_default_chatml_matches_transformers(trained: Tokenizer, hf_trained) -> None:
    assert trained.chat_template == CHATML_TEMPLATE
    for messages in _conversations():
        text = trained.apply_chat_template(messages)
        assert text == hf_trained.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert text.endswith("<|im_start|>assistant\n")
        assert trained.apply_chat_template(messages, tokenize=True) == hf_trained.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )


def test_template_environment_matches_transformers(trained: Tokenizer, hf_trained) -> None:
    tok = Tokenizer(trained.backend, bos_token="<|im_start|>", eos_token="<|im_end|>", chat_template=FEATURES_TEMPLATE)
    tools = [{"name": "add", "parameters": {"a": "int", "<b>": "é"}}]
    for kwargs in ({}, {"tools": tools, "greeting": "hé <there> & \"you\""}):
        for messages in _conversations():
            ours = tok.apply_chat_template(messages, **kwargs)
            theirs = hf_trained.apply_chat_template(
                messages, chat_template=FEATURES_TEMPLATE, add_generation_prompt=True, tokenize=False,
                bos_token="<|im_start|>", eos_token="<|im_end|>", **kwargs,
            )
            assert ours == theirs
    assert '"<b>": "é"' in tok.apply_chat_template(CONVERSATION, tools=tools)  # tojson does not escape


def test_raise_exception_and_strftime_now(trained: Tokenizer) -> None:
    tok = Tokenizer(trained.backend, chat_template=FEATURES_TEMPLATE)
    with pytest.raises(jinja2.TemplateError, match="bad role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    dated = Tokenizer(trained.backend, chat_template="{{ strftime_now('%Y') }}")
    assert dated.apply_chat_template(CONVERSATION).isdigit()


def test_template_is_sandboxed(trained: Tokenizer) -> None:
    evil = Tokenizer(trained.backend, chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        evil.apply_chat_template(CONVERSATION)


def _masked_runs(tok: Tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    """Decode each maximal run of masked tokens."""
    runs, current = [], []
    for i, m in zip(ids, mask):
        if m:
            current.append(i)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs + ([tok.decode(current)] if current else [])


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_assistant_mask_on_chatml(trained: Tokenizer, add_generation_prompt: bool) -> None:
    messages = [SYSTEM, *CONVERSATION]
    ids, mask = trained.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True, assistant_mask=True
    )
    assert ids == trained.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    assert len(mask) == len(ids) and set(mask) == {0, 1}
    replies = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert _masked_runs(trained, ids, mask) == replies


def test_assistant_mask_with_smollm2_default_system(smollm2: Tokenizer) -> None:
    # SmolLM2's template inserts a system turn when the first message is not one.
    ids, mask = smollm2.apply_chat_template(CONVERSATION[:4], tokenize=True, assistant_mask=True)
    assert _masked_runs(smollm2, ids, mask) == ["A greeting.\nIn French & Japanese.<|im_end|>", "4<|im_end|>"]


def test_assistant_mask_through_generation_tag_template(trained: Tokenizer) -> None:
    tok = Tokenizer(trained.backend, eos_token="<|im_end|>", chat_template=FEATURES_TEMPLATE)
    ids, mask = tok.apply_chat_template(CONVERSATION[:4], add_generation_prompt=False, tokenize=True, assistant_mask=True)
    assert _masked_runs(tok, ids, mask) == ["A greeting.\nIn French & Japanese.<|im_end|>", "4<|im_end|>"]


def test_assistant_mask_rejects_prefix_unstable_template(trained: Tokenizer) -> None:
    # Marks the last message, so a prefix renders differently from the full conversation.
    template = "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m.content }}\n{% endfor %}"
    tok = Tokenizer(trained.backend, chat_template=template)
    with pytest.raises(ValueError, match="cannot locate assistant message 1"):
        tok.apply_chat_template(CONVERSATION, tokenize=True, assistant_mask=True)


def test_assistant_mask_needs_tokenize(trained: Tokenizer) -> None:
    with pytest.raises(ValueError, match="tokenize=True"):
        trained.apply_chat_template(CONVERSATION, assistant_mask=True)


def test_chatml_fallback_and_missing_template(trained: Tokenizer) -> None:
    bare = Tokenizer(trained.backend)  # e.g. loaded from a bare tokenizer.json: no template
    assert bare.apply_chat_template(CONVERSATION) == trained.apply_chat_template(CONVERSATION)
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer(Backend(models.BPE())).apply_chat_template(CONVERSATION)
