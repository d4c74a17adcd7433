"""AsyncLLMEngine: concurrent streams equal their requests run alone; leaving a stream aborts it."""
import asyncio

import pytest

from llmkit.engine import AsyncLLMEngine, LLMEngine, SamplingParams
from tests.engine.conftest import naive


def test_concurrent_streams_deliver_every_token_once_in_order(tiny, tokenizer):
    engine = AsyncLLMEngine(LLMEngine(tiny, tokenizer, kv_cache_memory="32MiB", max_num_seqs=8))
    prompts = [[3 + i, 4 + i, 5 + 2 * i] * (1 + i % 3) for i in range(12)]

    async def one(i):
        tokens, text, finals = [], "", 0
        async for delta in engine.generate(prompts[i], SamplingParams(max_tokens=6 + i), f"r{i}"):
            tokens += delta.outputs[0].token_ids
            text += delta.outputs[0].text
            finals += delta.finished
        return tokens, text, finals

    async def main():
        return await asyncio.gather(*(one(i) for i in range(12)))

    results = asyncio.run(main())
    for i, (tokens, text, finals) in enumerate(results):
        assert tokens == naive(tiny, prompts[i], 6 + i, {tokenizer.eos_id})
        assert finals == 1
        skip = tokens[:-1] if tokens[-1] == tokenizer.eos_id else tokens
        assert text == tokenizer.decode(skip, skip_special_tokens=True)
    assert engine.engine.blocks.num_free_blocks == engine.engine.blocks.num_blocks


def test_leaving_a_stream_aborts_the_request_and_frees_its_blocks(tiny, tokenizer):
    engine = AsyncLLMEngine(LLMEngine(tiny, tokenizer, kv_cache_memory="32MiB"))

    async def main():
        stream = engine.generate(list(range(3, 100)), SamplingParams(max_tokens=300, ignore_eos=True), "long")
        async for _ in stream:
            break
        await stream.aclose()  # what a server does when the client disconnects
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not engine.engine.has_unfinished_requests():
                break
        # and it keeps serving
        out = [d async for d in engine.generate([5, 6], SamplingParams(max_tokens=3, ignore_eos=True), "next")]
        return out

    out = asyncio.run(main())
    assert sum(len(d.outputs[0].token_ids) for d in out) == 3
    assert engine.engine.blocks.num_free_blocks == engine.engine.blocks.num_blocks


def test_bad_requests_raise_in_the_caller(tiny, tokenizer):
    engine = AsyncLLMEngine(LLMEngine(tiny, tokenizer, kv_cache_memory="8MiB"))

    async def main():
        async for _ in engine.generate([5] * 600, SamplingParams(), "x"):
            pass

    with pytest.raises(ValueError, match="context"):
        asyncio.run(main())


def test_every_step_runs_on_one_dedicated_thread(tiny, tokenizer):
    # torch's CPU thread pool belongs to the calling thread: steps that hop threads ran 1.7x slower
    import threading

    engine = AsyncLLMEngine(LLMEngine(tiny, tokenizer, kv_cache_memory="32MiB"))
    inner, threads = engine.engine.step, []

    def step():
        threads.append(threading.get_ident())
        return inner()

    engine.engine.step = step

    async def one(i):
        async for _ in engine.generate([3 + i, 4, 5], SamplingParams(max_tokens=30, ignore_eos=True), f"r{i}"):
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(*(one(i) for i in range(4)))
        await one(10)  # after an idle wait, when a pool may hand the next step to another worker
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert len(threads) >= 30 and len(set(threads)) == 1 and loop_thread not in threads


def test_abort_ends_a_stream_with_finish_reason_abort(tiny, tokenizer):
    engine = AsyncLLMEngine(LLMEngine(tiny, tokenizer, kv_cache_memory="32MiB"))

    async def main():
        deltas = []
        async for delta in engine.generate([5, 6], SamplingParams(max_tokens=300, ignore_eos=True), "x"):
            deltas.append(delta)
            if len(deltas) == 2:
                engine.abort("x")
        return deltas

    deltas = asyncio.run(asyncio.wait_for(main(), 60))  # a stream the abort left hanging fails here
    assert deltas[-1].finished and deltas[-1].outputs[0].finish_reason == "abort"
    assert sum(len(d.outputs[0].token_ids) for d in deltas) < 300
    assert engine.engine.blocks.num_free_blocks == engine.engine.blocks.num_blocks
