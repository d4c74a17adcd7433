"""The engine's greedy output equals plain ``llmkit.generate`` greedy, token for token, whatever the batching."""
import warnings

import pytest

from llmkit.engine import LLMEngine, SamplingParams
from llmkit.generate.huge_pages import huge_pages_available
from tests.engine.conftest import naive, run_arrivals, workload
from tests.generate.test_huge_pages import vm_flags

CONFIGS = {
    "default": dict(),
    "no-prefix-cache": dict(enable_prefix_caching=False),
    "small-chunks": dict(max_num_batched_tokens=48, max_num_seqs=8),
    "preemption": dict(kv_cache_memory=None, num_blocks=40, block_size=8),
}


@pytest.fixture(scope="module")
def reference(tiny, tokenizer):
    reqs = workload(tokenizer.vocab_size)
    return reqs, [naive(tiny, p, m, {tokenizer.eos_id}) for p, m, _ in reqs]


def build(model, tokenizer, num_blocks=None, **options):
    if num_blocks is not None:  # size the pool in blocks: bytes per block from the model's shapes
        from llmkit.engine.model_runner import block_bytes

        options["kv_cache_memory"] = num_blocks * block_bytes(model, options.get("block_size", 16), model.dtype)
    options.setdefault("kv_cache_memory", "64MiB")
    return LLMEngine(model, tokenizer, **options)


@pytest.mark.parametrize("name", CONFIGS)
def test_engine_greedy_equals_generate(tiny, tokenizer, reference, name):
    reqs, expected = reference
    engine = build(tiny, tokenizer, **CONFIGS[name])
    free = engine.blocks.num_free_blocks
    got = run_arrivals(engine, reqs, lambda i: SamplingParams(max_tokens=reqs[i][1]))
    for i, want in enumerate(expected):
        assert got[str(i)] == want, f"request {i} (prompt {len(reqs[i][0])} tokens)"
    assert engine.blocks.num_free_blocks == free  # every block came back
    if name == "preemption":
        assert engine.num_preemptions > 0
    if name == "default":
        assert engine.blocks.cache_hits > 0  # the shared prefix was served from the cache
        assert engine.stats()["prefix_cache_hit_rate"] > 0
    if name == "no-prefix-cache":
        assert engine.blocks.cache_hits == 0


def test_mla_model_on_the_engine_equals_generate(tokenizer):
    from tests.engine.conftest import tiny_model

    mla = tiny_model(tokenizer, n_kv_heads=None, attention="mla", kv_lora_rank=16, q_lora_rank=None,
                     qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=16)
    reqs = workload(tokenizer.vocab_size, n=10, max_prompt=80, max_out=12, seed=2)
    engine = build(mla, tokenizer, max_num_batched_tokens=40)
    got = run_arrivals(engine, reqs, lambda i: SamplingParams(max_tokens=reqs[i][1]))
    for i, (prompt, max_tokens, _) in enumerate(reqs):
        assert got[str(i)] == naive(mla, prompt, max_tokens, {tokenizer.eos_id})


@pytest.mark.slow
def test_smollm2_on_the_engine_equals_generate(smollm2_gguf):
    from llmkit.generate import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(smollm2_gguf)
    reqs = workload(tok.vocab_size, n=32, max_prompt=300, max_out=10, seed=1, shared_prefix=64)
    engine = build(model, tok, kv_cache_memory="256MiB", max_num_batched_tokens=512)
    got = run_arrivals(engine, reqs, lambda i: SamplingParams(max_tokens=reqs[i][1]))
    for i, (prompt, max_tokens, _) in enumerate(reqs):
        assert got[str(i)] == naive(model, prompt, max_tokens, {tok.eos_id}), f"request {i}"
    assert engine.blocks.cache_hits > 0


@pytest.mark.slow
def test_compiled_decode_steps_equal_eager(tiny, tokenizer):
    engine = build(tiny, tokenizer, compile=True)
    # the second round reuses the compiled buckets' block-table rows with other, shorter tables
    for prompts, lengths in (([list(range(3, 60)), list(range(50, 61))], (8, 3)),
                             ([list(range(90, 99)), list(range(100, 140))], (3, 8))):
        for i, (prompt, n) in enumerate(zip(prompts, lengths)):  # together for 2 decode steps, then one alone
            engine.add_request(str(i), prompt, SamplingParams(max_tokens=n, ignore_eos=True))
        got = {}
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="torch.compile of the decode step failed")
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished:
                        got[out.request_id] = out.outputs[0].token_ids
        assert got == {str(i): naive(tiny, p, n, ()) for i, (p, n) in enumerate(zip(prompts, lengths))}
    assert set(engine.runner.steps) == {1, 2}  # decode-only steps of two rows, then of one, were compiled
    if huge_pages_available():  # and they read the weights from huge pages
        assert all("hg" in vm_flags(p.data_ptr()) for p in tiny.parameters())


@pytest.mark.slow
def test_compile_max_batch_compiles_small_buckets_at_warmup(tiny, tokenizer):
    prompts = [list(range(3, 40)), list(range(50, 61))]
    engine = build(tiny, tokenizer, compile=True, compile_max_batch=1)
    engine.warmup()
    assert set(engine.runner.steps) == {1}  # compiled before any request
    for i, (prompt, n) in enumerate(zip(prompts, (8, 3))):  # two rows decode eager, then one compiled
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=n, ignore_eos=True))
    got = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                got[out.request_id] = out.outputs[0].token_ids
    assert got == {str(i): naive(tiny, p, n, ()) for i, (p, n) in enumerate(zip(prompts, (8, 3)))}
    assert set(engine.runner.steps) == {1}
    assert engine.runner.compiled_buckets == (1,)
    assert build(tiny, tokenizer, compile=True, compile_max_batch=5).runner.compiled_buckets == (1, 2, 4, 8)
