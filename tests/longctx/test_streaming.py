"""StreamingLLM: the cache stays at sinks + window, and each step equals full attention over sinks + window."""
from __future__ import annotations

import pytest
import torch

from llmkit.longctx import StreamingLLM, streaming_nll
from tests.longctx.conftest import tiny_model


def _ids(n: int, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, 61, (batch, n), generator=torch.Generator().manual_seed(1))


def test_window_covering_the_stream_equals_plain_attention(tiny):
    ids = _ids(40, batch=2)
    stream = StreamingLLM(tiny, window=60, sinks=4, batch_size=2)
    got = torch.cat([stream.feed(ids[:, :7]), stream.feed(ids[:, 7:])], dim=1)
    torch.testing.assert_close(got, tiny(ids), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sinks", [0, 4])
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_each_step_is_attention_over_sinks_plus_window_at_cache_positions(sinks, layout):
    # one layer: its keys and values depend on the token alone, so re-encoding the kept tokens from
    # scratch must give exactly what the rolled cache holds (deeper layers' K/V remember evicted context)
    model = tiny_model(n_layers=1, rope_layout=layout, rope_scaling="yarn", rope_factor=2.0)
    window, n = 8, 40
    ids = _ids(n)
    stream = StreamingLLM(model, window=window, sinks=sinks)
    logits = stream.feed(ids)
    for t in (sinks + window, 25, n - 1):  # the reference: the kept tokens re-encoded from position 0
        kept = torch.cat([ids[:, :sinks], ids[:, t - window + 1:t + 1]], dim=1)
        torch.testing.assert_close(logits[:, t], model(kept)[:, -1], atol=1e-4, rtol=1e-4)


def test_chunked_eviction_gives_each_chunk_the_window_left_before_it():
    model = tiny_model(n_layers=1)
    window, sinks, chunk = 8, 2, 3
    ids = _ids(30)
    logits = StreamingLLM(model, window=window, sinks=sinks, chunk=chunk).feed(ids)
    for start in (10, 25):  # chunks after the fill: 10-12, 13-15, ...; the last one is shorter
        end = min(start + chunk, 30)
        kept = torch.cat([ids[:, :sinks], ids[:, end - window:end]], dim=1)
        torch.testing.assert_close(logits[:, start:end], model(kept)[:, -(end - start):], atol=1e-4, rtol=1e-4)


def test_cache_never_exceeds_its_size(tiny):
    stream = StreamingLLM(tiny, window=6, sinks=4)
    shapes = set()
    for t in range(30):
        stream.feed(_ids(1))
        assert stream.cached == min(t + 1, 10)
        shapes |= {tuple(layer.self_attn.kv_cache.k.shape) for layer in tiny.model.layers}
    assert shapes == {(1, 2, 10, 8)} and tiny.cache_len == 10


def test_generate_past_the_context_and_nll_shape(tiny):
    out = StreamingLLM(tiny, window=12, sinks=4).generate(_ids(5), max_new_tokens=300)
    assert out.shape == (1, 300) and tiny.cfg.max_seq_len < 305
    nll = streaming_nll(tiny, _ids(50), window=8, chunk=3)
    assert nll.shape == (1, 49) and torch.isfinite(nll).all()


def test_bad_input_is_refused(tiny):
    with pytest.raises(ValueError, match="window"):
        StreamingLLM(tiny, window=0)
    with pytest.raises(ValueError, match="chunk"):
        StreamingLLM(tiny, window=4, chunk=5)
    with pytest.raises(ValueError, match="dynamic"):
        StreamingLLM(tiny_model(rope_scaling="dynamic", rope_factor=2.0), window=4)
    with pytest.raises(ValueError, match="batch_size"):
        StreamingLLM(tiny, window=4).feed(_ids(3, batch=2))
