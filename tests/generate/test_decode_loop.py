"""The token loop on a random tiny CausalLM: cached decoding equals naive recomputation, batching, seeds, stops."""
import warnings

import pytest
import torch

from llmkit.generate import SamplingParams, TokenStream, generate_tokens
from llmkit.generate import compile as compile_mod


def _ids(b=2, t=6, seed=0, vocab=97):
    return torch.randint(3, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _naive_greedy(model, ids, n):
    """Reference: recompute the whole sequence every step, no cache, argmax."""
    out = ids
    for _ in range(n):
        out = torch.cat([out, model(out)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return out[:, ids.shape[1]:].tolist()


def test_cached_greedy_equals_naive_recomputation(tiny):
    ids = _ids()
    assert generate_tokens(tiny, ids, max_new_tokens=12).token_ids == _naive_greedy(tiny, ids, 12)


def test_left_padded_rows_equal_their_unpadded_runs(tiny):
    a, b = _ids(1, 3, seed=1), _ids(1, 7, seed=2)
    ids = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), a], 1), b])
    mask = (torch.arange(7) >= 4).long()[None].repeat(2, 1)
    mask[1] = 1
    batch = generate_tokens(tiny, ids, mask, max_new_tokens=10).token_ids
    assert batch[0] == generate_tokens(tiny, a, max_new_tokens=10).token_ids[0]
    assert batch[1] == generate_tokens(tiny, b, max_new_tokens=10).token_ids[0]


def test_seed_reproduces_sampling_and_different_seeds_differ(tiny):
    params = SamplingParams(temperature=1.0, top_p=0.95)
    runs = [generate_tokens(tiny, _ids(), max_new_tokens=16, sampling=params, seed=s).token_ids for s in (5, 5, 6)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_stop_id_ends_only_its_row(tiny):
    ids = _ids()
    free = generate_tokens(tiny, ids, max_new_tokens=12).token_ids
    stop = free[0][4]
    first = free[0].index(stop)
    out = generate_tokens(tiny, ids, max_new_tokens=12, stop_ids=[stop])
    assert out.token_ids[0] == free[0][:first + 1] and out.finish_reasons[0] == "stop"
    if stop not in free[1]:
        assert out.token_ids[1] == free[1] and out.finish_reasons[1] == "length"


def test_finished_rows_emit_nothing_and_the_loop_ends_when_all_are_done(tiny):
    stream = TokenStream(tiny, _ids(3), max_new_tokens=20)
    steps = []
    for step in stream:
        steps.append(step)
        if len(steps) == 2:
            stream.finish(1)
        if len(steps) == 5:
            stream.finish(0)
            stream.finish(2)
    assert len(steps) == 5
    assert [s[1] for s in steps[2:]] == [None] * 3
    assert [len(t) for t in stream.result().token_ids] == [5, 2, 5]
    assert stream.result().finish_reasons == ["stop"] * 3


def test_repetition_penalty_prevents_repeats(tiny):
    ids = _ids(1, 4)
    out = generate_tokens(tiny, ids, max_new_tokens=20, sampling=SamplingParams(repetition_penalty=1e4)).token_ids[0]
    assert len(set(out) | set(ids[0].tolist())) == len(out) + len(set(ids[0].tolist()))


def test_max_new_tokens_is_clipped_to_the_context_and_long_prompts_are_rejected(tiny):
    ctx = tiny.cfg.max_seq_len
    out = generate_tokens(tiny, _ids(1, ctx - 3), max_new_tokens=50)
    assert len(out.token_ids[0]) == 3 and out.finish_reasons == ["length"]
    with pytest.raises(ValueError, match="context"):
        generate_tokens(tiny, _ids(1, ctx), max_new_tokens=5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_tokens(tiny, _ids(1, 4), max_new_tokens=0)


def test_cache_is_reused_for_the_same_shape(tiny):
    generate_tokens(tiny, _ids(2, 5), max_new_tokens=4)
    buf = tiny.model.layers[0].self_attn.kv_cache.k
    generate_tokens(tiny, _ids(2, 9, seed=3), max_new_tokens=8)
    assert tiny.model.layers[0].self_attn.kv_cache.k is buf


def test_compile_failure_falls_back_to_eager(tiny, monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(compile_mod.torch, "compile", broken)
    ids = _ids()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = generate_tokens(tiny, ids, max_new_tokens=6, compile=True)
    assert any("decoding eagerly" in str(w.message) for w in caught)
    assert out.token_ids == generate_tokens(tiny, ids, max_new_tokens=6).token_ids


@pytest.mark.slow
def test_compiled_decode_equals_eager(tiny):
    ids = _ids()
    params = SamplingParams(temperature=0.8, top_k=20, repetition_penalty=1.2)
    for sampling in (None, params):
        eager = generate_tokens(tiny, ids, max_new_tokens=8, sampling=sampling, seed=0)
        compiled = generate_tokens(tiny, ids, max_new_tokens=8, sampling=sampling, seed=0, compile=True)
        assert compiled.token_ids == eager.token_ids


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_decode_equals_eager(tiny):
    import copy

    model = copy.deepcopy(tiny).cuda()
    ids = _ids().cuda()
    params = SamplingParams(temperature=0.8, top_p=0.9, repetition_penalty=1.2)
    for sampling in (None, params):
        eager = generate_tokens(model, ids, max_new_tokens=12, sampling=sampling, seed=0)
        for _ in range(2):  # the second run replays the recorded graphs
            graphed = generate_tokens(model, ids, max_new_tokens=12, sampling=sampling, seed=0, compile=True)
            assert graphed.token_ids == eager.token_ids


def test_compiling_a_step_lifts_dynamo_recompile_limit():
    # every model, dtype and batch bucket compiles the one decode-step function again; at dynamo's
    # default limit (8) a long test run or server fell back to eager decoding after the eighth
    import torch._dynamo.config as dynamo_config

    from llmkit.generate.compile import RECOMPILE_LIMIT, compile_step

    compile_step(lambda x: x, torch.device("cpu"))
    assert dynamo_config.recompile_limit >= RECOMPILE_LIMIT > 8
