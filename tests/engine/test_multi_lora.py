"""Multi-LoRA on the engine: a batch mixing the base and two adapters gives each request what that adapter alone gives."""
import copy

import pytest
import torch

from llmkit.engine import LLM, LLMEngine, SamplingParams, SpeculativeConfig
from llmkit.peft import apply_lora, load_adapter, save_adapter
from tests.engine.conftest import naive, run_arrivals, tiny_model, workload

ADAPTERS = {"qv": dict(target_modules=["q_proj", "v_proj"], r=4, alpha=8),
            "wide": dict(target_modules="all-linear", r=8, alpha=4, use_rslora=True)}


def make_adapter(base, directory, seed: int, **options) -> None:
    """Save a LoRA adapter whose B is random (a fresh one is the identity, which would test nothing)."""
    torch.manual_seed(seed)  # A's init
    model = apply_lora(copy.deepcopy(base), **options)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    save_adapter(model, directory)


@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory) -> dict[str, str]:
    out = {}
    for seed, (name, options) in enumerate(ADAPTERS.items()):
        out[name] = str(tmp_path_factory.mktemp(name))
        make_adapter(tiny, out[name], seed, **options)
    return out


@pytest.fixture(scope="module")
def adapted(tiny, adapters) -> dict:
    """Per adapter name (None = base): the model with that single adapter applied the usual way (unmerged)."""
    return {None: tiny, **{name: load_adapter(copy.deepcopy(tiny), d) for name, d in adapters.items()}}


def engine_with(tiny, tokenizer, adapters, **options) -> LLMEngine:
    return LLMEngine(copy.deepcopy(tiny), tokenizer, kv_cache_memory="32MiB", lora_adapters=adapters, **options)


def test_mixed_batch_equals_each_adapter_alone(tiny, tokenizer, adapters, adapted):
    reqs = workload(tokenizer.vocab_size, n=12, max_prompt=70, max_out=12, seed=3)
    names = [None, "qv", "wide"]
    engine = engine_with(tiny, tokenizer, adapters, max_num_batched_tokens=64)
    free = engine.blocks.num_free_blocks
    results, step = {}, 0
    pending = sorted(range(len(reqs)), key=lambda i: reqs[i][2])
    while pending or engine.has_unfinished_requests():
        while pending and reqs[pending[0]][2] <= step:
            i = pending.pop(0)
            engine.add_request(str(i), reqs[i][0], SamplingParams(max_tokens=reqs[i][1]), lora_name=names[i % 3])
        for out in engine.step():
            if out.finished:
                results[out.request_id] = out.outputs[0].token_ids
        step += 1
    for i, (prompt, max_tokens, _) in enumerate(reqs):
        want = naive(adapted[names[i % 3]], prompt, max_tokens, {tokenizer.eos_id})
        assert results[str(i)] == want, f"request {i} under {names[i % 3]}"
    assert engine.blocks.num_free_blocks == free
    # the adapters change the output at all (else the test above proves nothing)
    prompt = reqs[1][0]
    outs = {n: tuple(naive(m, prompt, 8, set())) for n, m in adapted.items()}
    assert len(set(outs.values())) == 3


def test_prefix_cache_is_per_adapter(tiny, tokenizer, adapters, adapted):
    prompt = workload(tokenizer.vocab_size, n=2, max_prompt=80, seed=5)[1][0]  # 80 tokens: 5 full blocks
    llm = LLM(copy.deepcopy(tiny), tokenizer=tokenizer, kv_cache_memory="32MiB", lora_adapters=adapters)
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    hits = []
    for name in ["qv", "wide", None, "qv"]:  # one after another: each finds the earlier ones' blocks cached
        before = llm.engine.blocks.cache_hits
        (out,) = llm.generate([prompt], params, use_tqdm=False, lora_name=name)
        assert out.outputs[0].token_ids == naive(adapted[name], prompt, 8, set()), name
        hits.append(llm.engine.blocks.cache_hits - before)
    assert hits == [0, 0, 0, 4]  # only the same adapter's blocks were reused


@pytest.mark.parametrize("method", ["ngram", "draft-is-target"])
def test_speculative_decoding_with_adapters(tiny, tokenizer, adapters, adapted, method):
    """Drafts (n-gram, or the base model itself drafting without adapters) are verified under each request's
    adapter, so greedy output is the adapter's own."""
    reqs = [(([5, 9, 14] * 6), 10, 0), (([7, 11] * 8), 12, 0), (([20, 30, 40, 50] * 4), 10, 1)]
    model = copy.deepcopy(tiny)
    spec = (SpeculativeConfig("ngram", num_tokens=3) if method == "ngram"
            else SpeculativeConfig("draft", num_tokens=3, draft_model=model))
    engine = LLMEngine(model, tokenizer, kv_cache_memory="32MiB", lora_adapters=adapters, speculative=spec)
    names = ["qv", "wide", None]
    got, proposed = {}, {}
    for i, (prompt, max_tokens, _) in enumerate(reqs):
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=max_tokens), lora_name=names[i])
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                got[out.request_id] = out.outputs[0].token_ids
                proposed[out.request_id] = out.metrics.spec_proposed_tokens
    for i, (prompt, max_tokens, _) in enumerate(reqs):
        assert got[str(i)] == naive(adapted[names[i]], prompt, max_tokens, {tokenizer.eos_id})
    assert proposed["0"] + proposed["1"] > 0  # requests under adapters were decoded speculatively


def test_bad_adapters_are_refused_by_name(tiny, tokenizer, adapters, tmp_path):
    with pytest.raises(ValueError, match="'ghost'.*not a peft adapter"):
        engine_with(tiny, tokenizer, {"ghost": str(tmp_path / "missing")})
    other = copy.deepcopy(tiny)
    other.model.layers[0].self_attn.q_proj = torch.nn.Linear(64, 32, bias=False)
    make_adapter(other, tmp_path / "other", 0, target_modules=["q_proj"], r=2)
    with pytest.raises(ValueError, match="'other'.*do not fit"):
        engine_with(tiny, tokenizer, {"other": str(tmp_path / "other")})
    make_adapter(tiny_model(tokenizer, n_layers=3), tmp_path / "deeper", 0, target_modules=["v_proj"], r=2)
    with pytest.raises(ValueError, match="'deeper'.*targets model.layers.2.self_attn.v_proj, which the base"):
        engine_with(tiny, tokenizer, {"deeper": str(tmp_path / "deeper")})
    make_adapter(tiny, tmp_path / "dora", 0, target_modules=["q_proj"], r=2, use_dora=True)
    with pytest.raises(ValueError, match="'dora'.*DoRA adapters are not supported"):
        engine_with(tiny, tokenizer, {"dora": str(tmp_path / "dora")})
    make_adapter(tiny, tmp_path / "head", 0, target_modules=["lm_head"], r=2)
    with pytest.raises(ValueError, match="'head'.*not the output head"):
        engine_with(tiny, tokenizer, {"head": str(tmp_path / "head")})
    engine = engine_with(tiny, tokenizer, adapters)
    with pytest.raises(ValueError, match="unknown LoRA adapter 'nope'"):
        engine.add_request("x", [1, 2, 3], lora_name="nope")
    with pytest.raises(ValueError, match="already in use"):
        engine.add_lora("qv", adapters["qv"])


def test_engine_without_adapters_is_unchanged(tiny, tokenizer):
    reqs = workload(tokenizer.vocab_size, n=4, max_prompt=30, max_out=6, seed=7)
    engine = engine_with(tiny, tokenizer, None)
    got = run_arrivals(engine, reqs, lambda i: SamplingParams(max_tokens=reqs[i][1]))
    assert not any(type(m).__name__ == "MultiLoRALinear" for m in engine.model.modules())
    for i, (prompt, max_tokens, _) in enumerate(reqs):
        assert got[str(i)] == naive(tiny, prompt, max_tokens, {tokenizer.eos_id})
