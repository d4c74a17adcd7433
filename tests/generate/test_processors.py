"""Each logits processor's defining property, on random logits."""
import math

import pytest
import torch

from llmkit.generate import processors as P

SEEDS = range(5)


def _logits(seed: int, b: int = 4, v: int = 50) -> torch.Tensor:
    return torch.randn(b, v, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 3, 17, 50, 80])
def test_top_k_keeps_the_k_largest(seed, k):
    logits = _logits(seed)
    out = P.top_k(logits, k)
    kept = torch.isfinite(out)
    assert (kept.sum(-1) == min(k, logits.shape[-1])).all()
    for row in range(logits.shape[0]):
        assert set(kept[row].nonzero().flatten().tolist()) == set(logits[row].topk(min(k, 50)).indices.tolist())
    assert torch.equal(out[kept], logits[kept])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", [0.05, 0.3, 0.9, 0.999, 1.0])
def test_top_p_keeps_the_smallest_set_with_mass_p(seed, p):
    logits = _logits(seed)
    probs = logits.softmax(-1)
    kept = torch.isfinite(P.top_p(logits, p))
    for row in range(logits.shape[0]):
        mass = probs[row][kept[row]].sum()
        assert mass >= p - 1e-12
        # every kept token is at least as likely as every dropped one
        if (~kept[row]).any():
            assert probs[row][kept[row]].min() >= probs[row][~kept[row]].max()
        # minimal: without its least likely token the set falls short of p
        assert mass - probs[row][kept[row]].min() < p


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", [0.0, 0.01, 0.2, 0.7, 1.0])
def test_min_p_keeps_tokens_above_a_fraction_of_the_top_probability(seed, p):
    logits = _logits(seed)
    probs = logits.softmax(-1)
    out = P.min_p(logits, p) if p > 0 else logits
    expected = probs >= p * probs.max(-1, keepdim=True).values
    assert torch.equal(torch.isfinite(out), expected)


def test_temperature_scales_and_sharpens():
    logits = _logits(0)
    assert torch.allclose(P.temperature(logits, 0.5), logits * 2)
    entropy = lambda x: -(x.softmax(-1) * x.log_softmax(-1)).sum(-1)  # noqa: E731
    assert (entropy(P.temperature(logits, 0.5)) < entropy(logits)).all()
    assert (entropy(P.temperature(logits, 2.0)) > entropy(logits)).all()


@pytest.mark.parametrize("penalty", [1.5, 0.7])
def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits(penalty):
    logits = _logits(1)
    seen = torch.rand(logits.shape, generator=torch.Generator().manual_seed(2)) < 0.3
    out = P.repetition_penalty(logits, seen, penalty)
    pos, neg = seen & (logits > 0), seen & (logits < 0)
    assert torch.allclose(out[pos], logits[pos] / penalty)
    assert torch.allclose(out[neg], logits[neg] * penalty)
    assert torch.equal(out[~seen], logits[~seen])
    if penalty > 1:  # a penalty > 1 never makes a seen token more likely than before
        assert (out[seen] <= logits[seen]).all()


def test_presence_and_frequency_penalties_follow_openai():
    logits = _logits(2)
    counts = torch.zeros_like(logits)
    counts[0, 3], counts[1, 7], counts[1, 8] = 1, 4, 2
    out = P.presence_frequency_penalty(logits, counts, presence=0.5, frequency=0.25)
    delta = logits - out
    assert math.isclose(delta[0, 3].item(), 0.5 + 0.25)
    assert math.isclose(delta[1, 7].item(), 0.5 + 1.0)
    assert math.isclose(delta[1, 8].item(), 0.5 + 0.5)
    assert (delta[counts == 0] == 0).all()


def test_top_k_keeps_ties_with_the_kth_value():
    logits = torch.tensor([[3.0, 1.0, 1.0, 0.0]])
    assert torch.isfinite(P.top_k(logits, 2)).tolist() == [[True, True, True, False]]
