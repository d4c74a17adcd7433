"""Engine behaviour per request: aborts, pool accounting, bad input, n > 1, seeds, logprobs, stop strings."""
import pytest
import torch

from llmkit.engine import LLM, LLMEngine, SamplingParams
from llmkit.generate import generate
from tests.engine.conftest import naive


def engine_for(model, tokenizer, **kw):
    kw.setdefault("kv_cache_memory", "32MiB")
    return LLMEngine(model, tokenizer, **kw)


def drain(engine):
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    return done


def test_abort_frees_all_blocks_at_once(tiny, tokenizer):
    engine = engine_for(tiny, tokenizer)
    free = engine.blocks.num_free_blocks
    engine.add_request("long", list(range(3, 200)), SamplingParams(max_tokens=200, ignore_eos=True))
    engine.add_request("other", [5, 6, 7], SamplingParams(max_tokens=5, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert engine.blocks.num_free_blocks < free
    final = engine.abort_request("long")
    assert final.finished and final.outputs[0].finish_reason == "abort"
    assert engine.abort_request("long") is None  # unknown now
    done = drain(engine)
    assert done["other"].outputs[0].finish_reason == "length" and len(done["other"].outputs[0].token_ids) == 5
    assert engine.blocks.num_free_blocks == free


def test_a_thousand_short_requests_leave_the_pool_as_it_was(tiny, tokenizer):
    engine = engine_for(tiny, tokenizer, max_num_seqs=64)
    free = engine.blocks.num_free_blocks
    for i in range(1000):
        engine.add_request(str(i), [3 + i % 50, 4 + i % 7], SamplingParams(max_tokens=1 + i % 3, ignore_eos=True))
        if i % 97 == 5:
            engine.abort_request(str(i))
    done = drain(engine)
    assert len(done) == 1000 - len(range(5, 1000, 97))
    assert engine.blocks.num_free_blocks == free
    assert engine.stats()["num_running"] == engine.stats()["num_waiting"] == 0


@pytest.mark.parametrize("prompt,params,match", [
    (list(range(3, 200)) * 3, SamplingParams(), "context is 512"),
    ([5, 6], SamplingParams(max_tokens=0), "max_tokens must be"),
    ([5, 6], SamplingParams(stop=[3]), "stop must be"),
    ([5, 6], SamplingParams(temperature=-1), "temperature"),
    ([5, 6], SamplingParams(n=0), "n must be"),
    ([], SamplingParams(), "prompt"),
    ([10**6], SamplingParams(), "token ids must be in"),
    (3.5, SamplingParams(), "a prompt is"),
])
def test_bad_input_is_refused_and_the_engine_keeps_serving(tiny, tokenizer, prompt, params, match):
    engine = engine_for(tiny, tokenizer)
    engine.add_request("good", [5, 6, 7], SamplingParams(max_tokens=4, ignore_eos=True))
    engine.step()
    with pytest.raises(ValueError, match=match):
        engine.add_request("bad", prompt, params)
    assert len(drain(engine)["good"].outputs[0].token_ids) == 4


def test_a_pool_too_small_for_one_sequence_is_refused(tiny, tokenizer):
    from llmkit.engine.model_runner import block_bytes

    engine = LLMEngine(tiny, tokenizer, block_size=16, kv_cache_memory=4 * block_bytes(tiny, 16, tiny.dtype))
    with pytest.raises(ValueError, match="cannot hold one sequence"):
        engine.add_request("x", list(range(3, 60)), SamplingParams(max_tokens=20))
    with pytest.raises(ValueError, match="smaller than one KV block"):
        LLMEngine(tiny, tokenizer, kv_cache_memory=100)
    with pytest.raises(ValueError, match="cannot read"):
        LLMEngine(tiny, tokenizer, kv_cache_memory="lots")


def test_n_continuations_share_the_prompt_blocks(tiny, tokenizer):
    engine = engine_for(tiny, tokenizer)
    prompt = list(range(3, 70))
    engine.add_request("r", prompt, SamplingParams(n=4, temperature=1.0, seed=1, max_tokens=12, ignore_eos=True))
    engine.step()  # prefill once, fork: the prompt's full blocks are shared by all four
    seqs = engine.tracks["r"].request.seqs
    assert len(seqs) == 4
    full = (len(prompt)) // engine.blocks.block_size
    assert all(s.block_table[:full] == seqs[0].block_table[:full] for s in seqs)
    out = drain(engine)["r"]
    assert [o.index for o in out.outputs] == [0, 1, 2, 3]
    assert all(len(o.token_ids) == 12 for o in out.outputs)
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1  # sampled, so they differ
    # greedy continuations are all the greedy output
    engine.add_request("g", prompt, SamplingParams(n=3, max_tokens=8, ignore_eos=True))
    outs = drain(engine)["g"].outputs
    assert outs[0].token_ids == outs[1].token_ids == outs[2].token_ids == naive(tiny, prompt, 8, ())


def test_seeded_sampling_is_reproducible_whatever_the_batch(tiny, tokenizer):
    p = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=7, max_tokens=10, ignore_eos=True)
    alone = engine_for(tiny, tokenizer)
    alone.add_request("a", [5, 6, 7], p)
    crowded = engine_for(tiny, tokenizer)
    for i in range(5):
        crowded.add_request(f"o{i}", [8, 9, 10 + i], SamplingParams(temperature=1.0, max_tokens=10))
    crowded.add_request("a", [5, 6, 7], p)
    assert drain(alone)["a"].outputs[0].token_ids == drain(crowded)["a"].outputs[0].token_ids


def test_logprobs_are_the_model_log_softmax(tiny, tokenizer):
    engine = engine_for(tiny, tokenizer)
    prompt = [5, 6, 7, 8]
    engine.add_request("r", prompt, SamplingParams(max_tokens=3, logprobs=2, ignore_eos=True))
    out = drain(engine)["r"].outputs[0]
    assert len(out.logprobs) == 3
    with torch.no_grad():
        full = tiny(torch.tensor([prompt + out.token_ids]))[0].float().log_softmax(-1)
    for i, (tok, lps) in enumerate(zip(out.token_ids, out.logprobs)):
        row = full[len(prompt) - 1 + i]
        assert next(iter(lps)) == tok and len(lps) in (2, 3)
        for t, lp in lps.items():
            assert lp == pytest.approx(float(row[t]), abs=1e-4)
        assert set(row.topk(2).indices.tolist()) <= set(lps)


def test_logprobs_of_a_constrained_request_come_from_the_raw_logits(tiny, tokenizer):
    """A logits processor forcing a token changes the choice, not the reported distribution."""
    forced = 9

    def only_forced(output_ids, logits):
        return torch.full_like(logits, float("-inf")).index_fill_(0, torch.tensor([forced]), 0.0)

    engine = engine_for(tiny, tokenizer)
    prompt = [5, 6, 7, 8]
    engine.add_request("r", prompt, SamplingParams(max_tokens=2, logprobs=0, ignore_eos=True),
                       logits_processor=only_forced)
    out = drain(engine)["r"].outputs[0]
    assert out.token_ids == [forced, forced]
    with torch.no_grad():
        full = tiny(torch.tensor([prompt + out.token_ids]))[0].float().log_softmax(-1)
    for i, lps in enumerate(out.logprobs):
        assert lps[forced] == pytest.approx(float(full[len(prompt) - 1 + i, forced]), abs=1e-4)
        assert lps[forced] < -1e-3  # the masked logits would give log 1 = 0


def test_text_and_stop_strings_match_generate(tiny, tokenizer):
    prompts = ["Hello world.", "The quick brown", "Emoji 🤗 and"]
    llm = LLM(tiny, tokenizer=tokenizer, kv_cache_memory="32MiB")
    for stop in ([], ["o"], ["the", " f"]):
        outs = llm.generate(prompts, SamplingParams(max_tokens=20, stop=stop), use_tqdm=False)
        ref = generate(tiny, tokenizer, prompts, max_new_tokens=20, stop=stop or None)
        assert [o.outputs[0].text for o in outs] == ref.texts
        assert [o.outputs[0].token_ids for o in outs] == ref.token_ids
        assert [o.outputs[0].finish_reason for o in outs] == ref.finish_reasons


def test_llm_generate_keeps_prompt_order_and_accepts_every_prompt_form(tiny, tokenizer):
    llm = LLM(tiny, tokenizer=tokenizer, kv_cache_memory="32MiB")
    prompts = [[5, 6, 7], "Hello", [7] * 40, [9]]
    params = [SamplingParams(max_tokens=k, ignore_eos=True) for k in (3, 1, 7, 2)]
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 1, 7, 2]
    assert outs[0].prompt_token_ids == [5, 6, 7] and outs[1].prompt == "Hello"
    assert outs[2].metrics.first_token_time >= outs[2].metrics.arrival_time
    again = llm.generate([[7] * 40 + [8]], SamplingParams(max_tokens=1), use_tqdm=False)[0]
    assert again.metrics.num_cached_tokens == 32  # two full 16-token blocks of the earlier prompt
    with pytest.raises(ValueError, match="sampling_params"):
        llm.generate(prompts, params[:2])
    assert not llm.engine.has_unfinished_requests()  # a refused batch queues nothing


def test_prompts_arriving_together_share_a_prefix_computed_in_the_same_step(tiny, tokenizer):
    engine = engine_for(tiny, tokenizer, max_num_batched_tokens=512)
    system = [(7 * i) % 50 + 3 for i in range(70)]  # four full 16-token blocks, then a partial one
    prompts = [system + [60 + i, 61 + i] for i in range(4)]
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=5, ignore_eos=True))
    schedule, fed = engine.scheduler.schedule, []

    def counting_schedule():  # the tokens each step feeds
        plan = schedule()
        fed.append(plan.num_tokens)
        return plan

    engine.scheduler.schedule = counting_schedule
    done = drain(engine)
    assert fed[0] == 72 + 3 * (72 - 64)  # the later prompts compute only what follows the shared blocks
    for i, prompt in enumerate(prompts):
        out = done[str(i)]
        assert out.metrics.num_cached_tokens == (0 if i == 0 else 64)
        assert out.outputs[0].token_ids == naive(tiny, prompt, 5, set())


def test_penalties_and_truncation_per_row_match_generate(tiny, tokenizer):
    from llmkit.generate import generate_tokens

    rows = [SamplingParams(repetition_penalty=1.3, max_tokens=12, ignore_eos=True),
            SamplingParams(presence_penalty=1.5, frequency_penalty=0.5, max_tokens=12, ignore_eos=True),
            SamplingParams(max_tokens=12, ignore_eos=True),
            SamplingParams(temperature=0.8, top_k=1, max_tokens=12, ignore_eos=True),  # top-1 sampling is greedy
            SamplingParams(temperature=0.8, min_p=1.0, max_tokens=12, ignore_eos=True)]  # so is min-p = 1
    engine = engine_for(tiny, tokenizer)
    prompt = [5, 6, 7, 5, 6, 7, 9]
    for i, p in enumerate(rows):
        engine.add_request(str(i), prompt, p)
    done = drain(engine)
    for i, p in enumerate(rows):
        choice = SamplingParams(**{k: getattr(p, k) for k in ("repetition_penalty", "presence_penalty",
                                                               "frequency_penalty")})
        want = generate_tokens(tiny, torch.tensor([prompt]), max_new_tokens=12, sampling=choice).token_ids[0]
        assert done[str(i)].outputs[0].token_ids == want, f"row {i}"


def test_rows_of_one_logits_tensor_are_sampled_without_a_copy():
    from llmkit.engine.llm_engine import _as_matrix

    logits = torch.randn(5, 7)
    rows = [logits[i:i + 1][-1] for i in range(1, 4)]  # the runner's per-feed slices of a decode step
    matrix = _as_matrix(rows)
    assert torch.equal(matrix, logits[1:4]) and matrix.data_ptr() == logits[1].data_ptr()
    for rows in ([logits[0], logits[2]], [logits[3], logits[3]], [logits[1], torch.randn(7)]):  # gaps, n > 1
        assert torch.equal(_as_matrix(rows), torch.stack(rows))
