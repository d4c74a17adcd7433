"""The official ``openai`` client against a live server: both endpoints, sync and async, streaming and not."""
from __future__ import annotations

import asyncio
import math

import openai
import pytest

from llmkit.engine import LLM
from llmkit.generate import SamplingParams

from .conftest import MODEL

GREEDY = dict(temperature=0, extra_body={"ignore_eos": True})


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(tiny, tokenizer):
    """Greedy text of a prompt from the offline engine: what the server must return."""
    llm = LLM(tiny, tokenizer=tokenizer)

    def run(prompt, max_tokens: int) -> str:
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        return llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].text

    return run


def test_models(client, server):
    (card,) = client.models.list().data
    assert card.id == MODEL and card.max_model_len == server.engine.max_seq_len


def test_completion_equals_engine(client, reference):
    out = client.completions.create(model=MODEL, prompt="The quick brown", max_tokens=12, **GREEDY)
    assert out.choices[0].text == reference("The quick brown", 12)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 12 and out.usage.total_tokens == out.usage.prompt_tokens + 12


def test_completion_stream_batch_and_usage(client, reference):
    prompts = ["Hello world.", "END of"]
    stream = client.completions.create(model=MODEL, prompt=prompts, max_tokens=8, stream=True,
                                       stream_options={"include_usage": True}, **GREEDY)
    texts, usage, finish = {}, None, {}
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
        usage = chunk.usage or usage
    assert texts == {i: reference(p, 8) for i, p in enumerate(prompts)}
    assert finish == {0: "length", 1: "length"} and usage.completion_tokens == 16


def test_chat_stream_equals_non_stream(client, reference):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world."}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=10, **GREEDY)
    assert full.choices[0].message.role == "assistant"
    assert full.choices[0].message.content == reference(messages, 10)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_n_choices_and_seed(client):
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, n=3, temperature=1.0,
                  seed=7, extra_body={"ignore_eos": True})
    a = client.chat.completions.create(**kwargs)
    b = client.chat.completions.create(**kwargs)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]  # seeded
    assert a.usage.completion_tokens == 18


def test_logprobs(client):
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                         logprobs=True, top_logprobs=3, **GREEDY)
    content = out.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy picks the most likely
        assert sum(math.exp(t.logprob) for t in entry.top_logprobs) <= 1 + 1e-5
    comp = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, logprobs=2, **GREEDY)
    lp = comp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(len(t) <= 2 for t in lp.top_logprobs) and lp.text_offset[0] == 0


def test_async_client_concurrent(server, reference):
    async def main():
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
        prompts = [f"Hello world {i}" for i in range(6)]

        async def one(p: str) -> str:
            stream = await client.completions.create(model=MODEL, prompt=p, max_tokens=6, stream=True, **GREEDY)
            return "".join([c.choices[0].text async for c in stream if c.choices])

        return prompts, await asyncio.gather(*(one(p) for p in prompts))

    prompts, texts = asyncio.run(main())
    assert texts == [reference(p, 6) for p in prompts]


def test_errors_are_openai_objects(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", top_p=0)
    assert e.value.body["param"] == "top_p"
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="no-such-model", prompt="x")
    assert e.value.body["param"] == "model" and e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="Hello world. " * 700)
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], top_logprobs=2)
    assert e.value.body["param"] == "top_logprobs"


def test_echo_prepends_the_prompt(client, reference, tokenizer):
    prompts = ["The quick brown", "END of"]
    want = [p + reference(p, 6) for p in prompts]
    out = client.completions.create(model=MODEL, prompt=prompts, max_tokens=6, echo=True, n=2, **GREEDY)
    assert [c.text for c in out.choices] == [w for w in want for _ in range(2)]
    assert out.usage.completion_tokens == 24
    ids = [11, 42, 7, 99]  # token ids echo as their text
    out = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, echo=True, **GREEDY)
    assert out.choices[0].text == tokenizer.decode(ids) + reference(ids, 6)
    stream = client.completions.create(model=MODEL, prompt=prompts, max_tokens=6, echo=True, stream=True, **GREEDY)
    texts: dict[int, str] = {}
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert texts == dict(enumerate(want))
    with pytest.raises(openai.BadRequestError) as e:  # prompt log-probabilities are not computed
        client.completions.create(model=MODEL, prompt="x", echo=True, logprobs=1)
    assert e.value.body["param"] == "echo"
