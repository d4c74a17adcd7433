"""The engine's greedy output equals plain ``llmkit.generate`` greedy, token for token, whatever the batching."""
import pytest

from llmkit.engine import LLMEngine, SamplingParams
from tests.engine.conftest import naive, run_arrivals, workload

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
    if name == "no-prefix-cache":
        assert engine.blocks.cache_hits == 0
