"""NBCE: one context with beta = 0 is plain decoding; several contexts follow the formula step by step."""
from __future__ import annotations

import pytest
import torch

from llmkit.longctx import nbce_combine, nbce_generate


def _seq(n: int, seed: int) -> list[int]:
    return torch.randint(3, 61, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _greedy(model, ids: list[int], n: int) -> list[int]:
    out = []
    for _ in range(n):
        out.append(int(model(torch.tensor([ids + out]))[0, -1].argmax()))
    return out


def test_one_context_with_beta_zero_is_plain_decoding(tiny):
    ctx, question = _seq(20, 1), _seq(5, 2)
    got = nbce_generate(tiny, [ctx], question, 8, beta=0.0)
    assert got == _greedy(tiny, ctx + question, 8)


@pytest.mark.parametrize("pooling", ["min_entropy", "mean"])
def test_several_contexts_follow_the_formula_each_step(tiny, pooling):
    contexts, question, beta = [_seq(12, 1), _seq(30, 3), _seq(7, 4)], _seq(4, 2), 0.25
    got = nbce_generate(tiny, contexts, question, 6, beta=beta, pooling=pooling)
    # the reference: every row re-encoded alone (no padding, no cache), the combination written out
    out = []
    for _ in range(6):
        rows = [c + question + out for c in contexts] + [question + out]
        logp = torch.stack([tiny(torch.tensor([r]))[0, -1].log_softmax(-1) for r in rows])
        if pooling == "mean":
            pooled = logp[:-1].mean(0)
        else:
            entropy = -(logp[:-1].exp() * logp[:-1]).sum(-1)
            pooled = logp[int(entropy.argmin())]
        out.append(int(((1 + beta) * pooled - beta * logp[-1]).argmax()))
    assert got == out


def test_mean_pooling_with_beta_n_minus_one_is_naive_bayes():
    logp = torch.randn(4, 10).log_softmax(-1)
    torch.testing.assert_close(nbce_combine(logp, beta=2.0, pooling="mean"), logp[:3].sum(0) - 2 * logp[3])


def test_stop_ids_and_bad_input(tiny):
    ctx, question = _seq(10, 1), _seq(3, 2)
    first = nbce_generate(tiny, [ctx], question, 5)[0]
    assert nbce_generate(tiny, [ctx], question, 5, stop_ids=[first]) == [first]
    with pytest.raises(ValueError, match="exceeds the model's context"):
        nbce_generate(tiny, [_seq(250, 1)], question, 10)
    with pytest.raises(ValueError, match="at least one context"):
        nbce_generate(tiny, [], question, 5)
    with pytest.raises(ValueError, match="pooling"):
        nbce_combine(torch.zeros(2, 3), pooling="max")
