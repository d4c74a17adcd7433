"""Speculative decoding: greedy output equals plain greedy for every method; sampling keeps the target distribution."""
import pytest
import torch

from llmkit.engine import LLMEngine, SamplingParams, SpeculativeConfig
from llmkit.engine.speculative import NgramProposer, verify
from tests.engine.conftest import naive, run_arrivals, tiny_model, workload


@pytest.fixture(scope="module")
def draft(tokenizer):
    torch.manual_seed(1)
    return tiny_model(tokenizer, n_layers=1, dim=32, n_heads=2, n_kv_heads=1, ffn_dim=48)


def repetitive(vocab, n=12):
    """Prompts that repeat themselves, so prompt lookup has something to find."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        unit = torch.randint(3, vocab, (3 + i % 5,), generator=g).tolist()
        out.append((unit * (2 + i % 4), 8 + 3 * i, i % 4))
    return out


@pytest.mark.parametrize("method", ["ngram", "draft", "draft-is-target", "lookahead"])
def test_speculative_greedy_equals_plain_greedy(tiny, tokenizer, draft, method):
    spec = {"ngram": SpeculativeConfig("ngram", num_tokens=3),
            "lookahead": SpeculativeConfig("lookahead", num_tokens=3, lookahead_window=4),
            "draft": SpeculativeConfig("draft", num_tokens=3, draft_model=draft),
            "draft-is-target": SpeculativeConfig("draft", num_tokens=4, draft_model=tiny)}[method]
    reqs = repetitive(tokenizer.vocab_size) + workload(tokenizer.vocab_size, n=8, max_prompt=60, seed=4)
    engine = LLMEngine(tiny, tokenizer, kv_cache_memory="32MiB", speculative=spec, max_num_batched_tokens=64)
    free = engine.blocks.num_free_blocks
    got = run_arrivals(engine, reqs, lambda i: SamplingParams(max_tokens=reqs[i][1]))
    for i, (prompt, max_tokens, _) in enumerate(reqs):
        assert got[str(i)] == naive(tiny, prompt, max_tokens, {tokenizer.eos_id}), f"request {i}"
    assert engine.blocks.num_free_blocks == free


def test_speculation_metrics_and_a_perfect_draft(tiny, tokenizer):
    engine = LLMEngine(tiny, tokenizer, kv_cache_memory="32MiB",
                       speculative=SpeculativeConfig("draft", num_tokens=4, draft_model=tiny))
    engine.add_request("r", [5, 6, 7, 8], SamplingParams(max_tokens=21, ignore_eos=True))
    final = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            final = out
    m = final.metrics
    assert m.acceptance_rate == 1.0  # the target drafting for itself is always right
    assert m.tokens_per_target_step == pytest.approx(5.0)  # 4 drafts + 1 bonus token per verification
    assert len(final.outputs[0].token_ids) == 21


def test_ngram_lookup_proposes_the_earlier_continuation():
    prop = NgramProposer(SpeculativeConfig("ngram", num_tokens=3))
    assert prop._lookup([1, 2, 3, 4, 9, 2, 3], 3) == [4, 9, 2]
    assert prop._lookup([1, 2, 3, 4, 9, 2, 3], 1) == [4]
    assert prop._lookup([5, 6, 7], 3) == []


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("deterministic", [False, True])
def test_rejection_sampling_preserves_the_target_distribution(deterministic):
    # chi-square test over 20,000 verifications on a 5-token vocabulary (critical value, 4 dof, p = 0.001: 18.47)
    p = torch.tensor([0.05, 0.40, 0.25, 0.20, 0.10])
    q = torch.tensor([0.30, 0.10, 0.10, 0.45, 0.05])
    logits = p.log()[None].repeat(2, 1)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(5)
    naive_counts = torch.zeros(5)
    for _ in range(20_000):
        x = int(torch.multinomial(q, 1, generator=g)) if not deterministic else 3
        first = verify(logits, [x], greedy=False, q=None if deterministic else q[None], generator=g)[0]
        counts[first] += 1
        naive_counts[x] += 1  # "always accept the draft": the distribution a broken verifier would give
    assert chi_square(counts, p) < 18.47
    assert chi_square(naive_counts, p) > 18.47  # the test can tell a wrong scheme apart


def test_greedy_verification_keeps_the_agreeing_prefix_and_adds_the_target_token():
    logits = torch.full((4, 6), -5.0)
    for j, t in enumerate([2, 4, 1, 5]):
        logits[j, t] = 5.0
    assert verify(logits, [2, 4, 3], True, None, None) == [2, 4, 1]
    assert verify(logits, [2, 4, 1], True, None, None) == [2, 4, 1, 5]
    assert verify(logits, [0, 4, 1], True, None, None) == [2]


def test_speculative_config_refuses_nonsense(tiny, tokenizer):
    with pytest.raises(ValueError, match="method"):
        SpeculativeConfig("medusa")
    with pytest.raises(ValueError, match="lookahead_window"):
        SpeculativeConfig("lookahead", lookahead_window=0)
    with pytest.raises(ValueError, match="draft_model"):
        SpeculativeConfig("draft")
    other = tiny_model(tokenizer, vocab_size=tokenizer.vocab_size + 5)
    with pytest.raises(ValueError, match="share a tokenizer"):
        LLMEngine(tiny, tokenizer, kv_cache_memory="8MiB", speculative=SpeculativeConfig("draft", draft_model=other))


def test_lookahead_learns_a_loop_and_accepts_from_its_pool(tiny, tokenizer):
    # a tiny random model falls into short greedy cycles; once the Jacobi window has seen one,
    # the pool proposes it and verification accepts several tokens per step
    engine = LLMEngine(tiny, tokenizer, kv_cache_memory="32MiB",
                       speculative=SpeculativeConfig("lookahead", num_tokens=4, lookahead_window=6))
    prompt = [5, 6, 7, 8]
    engine.add_request("r", prompt, SamplingParams(max_tokens=120, ignore_eos=True))
    final = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            final = out
    assert final.outputs[0].token_ids == naive(tiny, prompt, 120, ())
    m = final.metrics
    assert m.spec_accepted_tokens > 0 and m.tokens_per_target_step > 1.0
