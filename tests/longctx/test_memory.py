"""InfLLM and kNN attention: full attention when the memory returns everything (NoPE) or the window covers
the input; bounded keys per query; retrieval picks what the query points at; faiss equals exact top-k."""
from __future__ import annotations

import pytest
import torch

from llmkit.longctx import BlockMemory, KNNMemory, infllm, knn_attention
from tests.longctx.conftest import tiny_model


def _ids(n: int) -> torch.Tensor:
    return torch.randint(0, 61, (2, n), generator=torch.Generator().manual_seed(3))


def _runners(model, everything: bool):
    """InfLLM and kNN set to retrieve every evicted token (``everything``) or a small part of them."""
    if everything:
        return {"infllm": infllm(model, window=8, sinks=2, block_size=4, n_repr=2, topk=100, chunk=3),
                "knn": knn_attention(model, k=1000, window=8, sinks=2, chunk=3)}
    return {"infllm": infllm(model, window=8, sinks=2, block_size=4, n_repr=2, topk=2, chunk=3),
            "knn": knn_attention(model, k=4, window=8, sinks=2, chunk=3)}


@pytest.mark.parametrize("method", ["infllm", "knn"])
def test_retrieving_everything_without_positions_is_full_attention(method):
    model = tiny_model(pos_embedding="none")
    ids = _ids(40)
    runner = _runners(model, everything=True)[method]
    got = torch.cat([runner.feed(ids[:, :17]), runner.feed(ids[:, 17:])], dim=1)
    torch.testing.assert_close(got, model(ids), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["infllm", "knn"])
def test_window_covering_the_input_is_plain_attention(tiny, method):
    ids = _ids(30)
    runner = {"infllm": infllm(tiny, window=64, chunk=7), "knn": knn_attention(tiny, window=64, chunk=7)}[method]
    torch.testing.assert_close(runner.feed(ids), tiny(ids), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["infllm", "knn"])
def test_keys_per_query_stay_bounded_and_the_model_is_restored(tiny, method):
    runner = _runners(tiny, everything=False)[method]
    attention = [layer.self_attn for layer in tiny.model.layers]
    runner.feed(_ids(120))
    bound = {"infllm": 2 + 2 * 4 + 3 + 8 + 3, "knn": 2 + 4 + 8 + 3}[method]  # sinks + retrieved (+ partial) + local
    assert all(0 < m.attended <= bound for m in runner.layers.values())
    assert [layer.self_attn for layer in tiny.model.layers] == attention
    assert runner.generate(_ids(5), 4).shape == (2, 4)


def test_block_retrieval_picks_the_block_the_query_points_at():
    memory = BlockMemory(block_size=4, n_repr=1, topk=1)
    keys = torch.randn(1, 1, 12, 8) * 0.01
    keys[0, 0, 6] = torch.ones(8)  # block 1 holds the key aligned with the query
    score = torch.zeros(1, 1, 12)
    score[0, 0, 6] = 1.0  # ... and it is that block's representative
    memory.add(keys, torch.arange(12.0).view(1, 1, 12, 1).expand(1, 1, 12, 8), score)
    _, values = memory.retrieve(torch.ones(1, 1, 1, 1, 8), scale=1.0)
    assert values[0, 0, :, 0].tolist() == [4.0, 5.0, 6.0, 7.0]


def test_faiss_index_equals_exact_top_k():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(2, 2, 50, 8, generator=g), torch.randn(2, 2, 50, 8, generator=g)
    q = torch.randn(2, 2, 3, 4, 8, generator=g)
    exact, fast = KNNMemory(5, "exact"), KNNMemory(5, "faiss")
    for m in (exact, fast):
        m.add(k[:, :, :20], v[:, :, :20], None)
        m.add(k[:, :, 20:], v[:, :, 20:], None)
    for a, b in zip(exact.retrieve(q, 0.5), fast.retrieve(q, 0.5)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bad_input(tiny):
    with pytest.raises(ValueError, match="n_repr"):
        BlockMemory(block_size=4, n_repr=5)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        infllm(tiny, window=250, chunk=64)
    with pytest.raises(ValueError, match="RoPE or no positions"):
        knn_attention(tiny_model(pos_embedding="learned"))


def test_knn_dense_scores_equal_gathered_values(tiny, monkeypatch):
    """The two ways of attending to the retrieved keys (a -inf-masked row over the memory, or each
    query's k values gathered) give the same outputs, and the same keys-per-query count."""
    from llmkit.longctx import knn

    outs, attended = [], []
    for dense_up_to in (0, 10**6):
        monkeypatch.setattr(knn, "DENSE_UP_TO", dense_up_to)
        runner = knn_attention(tiny, k=4, window=8, sinks=2, chunk=3)
        outs.append(runner.feed(_ids(60)))
        attended.append([m.attended for m in runner.layers.values()])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    assert attended[0] == attended[1] and max(attended[0]) == 2 + 4 + 8 + 3


def test_last_only_feeds_return_the_last_row_of_a_full_feed(tiny):
    """What generation feeds (a long prompt's logits are never all held) equals the full feed's last row."""
    from llmkit.longctx import StreamingLLM

    makers = [lambda: StreamingLLM(tiny, window=8, sinks=2, batch_size=2, chunk=3),
              lambda: infllm(tiny, window=8, sinks=2, block_size=4, n_repr=2, topk=2, chunk=3),
              lambda: knn_attention(tiny, k=4, window=8, sinks=2, chunk=3)]
    ids = _ids(40)
    for make in makers:
        full, last = make().feed(ids), make().feed(ids, last_only=True)
        assert last.shape == (2, 1, full.shape[-1])
        torch.testing.assert_close(last[:, 0], full[:, -1])


def test_generation_scores_only_the_last_prompt_token(tiny):
    """Every long-context decoder runs the LM head on one position per forward while reading a prompt,
    so a 12k-token prompt never materialises (12k, vocab) logits."""
    from llmkit.longctx import StreamingLLM, nbce_generate, pcw_generate

    rows = []
    hook = tiny.lm_head.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[1]))
    try:
        ids = _ids(40)
        StreamingLLM(tiny, window=8, sinks=2, batch_size=2, chunk=3).generate(ids, 2)
        infllm(tiny, window=8, sinks=2, block_size=4, n_repr=2, topk=2, chunk=3).generate(ids, 2)
        knn_attention(tiny, k=4, window=8, sinks=2, chunk=3).generate(ids, 2)
        doc = ids[0].tolist()
        nbce_generate(tiny, [doc[:20], doc[20:]], [5, 6], 2)
        pcw_generate(tiny, [doc[:20], doc[20:]], [5, 6], 2)
    finally:
        hook.remove()
    assert len(rows) > 40 and max(rows) == 2  # PCW's task tokens (2) are scored together; prompts never are
