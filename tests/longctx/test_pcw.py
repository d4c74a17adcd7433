"""PCW: one window is plain attention; windows are order-free; positions stay within one window + task."""
from __future__ import annotations

import pytest
import torch

from llmkit.longctx import ParallelContext, pcw_generate
from tests.longctx.test_nbce import _greedy, _seq


def test_one_window_equals_plain_attention(tiny):
    window, task = _seq(30, 1), _seq(6, 2)
    got = ParallelContext(tiny, [window], 6).append(task)
    torch.testing.assert_close(got, tiny(torch.tensor([window + task]))[0, 30:], atol=1e-4, rtol=1e-4)
    assert pcw_generate(tiny, [window], task, 7) == _greedy(tiny, window + task, 7)


def test_window_order_does_not_matter_and_windows_are_independent(tiny):
    windows, task = [_seq(20, 1), _seq(9, 3), _seq(14, 4)], _seq(5, 2)
    a = ParallelContext(tiny, windows, 5).append(task)
    b = ParallelContext(tiny, windows[::-1], 5).append(task)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # each window's cached keys are those of the window encoded alone from position 0
    ParallelContext(tiny, windows[1:2], 5)
    k_alone = tiny.model.layers[1].self_attn.kv_cache.k[:, :, :9].clone()
    ParallelContext(tiny, windows, 5)
    torch.testing.assert_close(tiny.model.layers[1].self_attn.kv_cache.k[:, :, 20:29], k_alone)


def test_more_context_than_the_model_holds(tiny):
    windows = [_seq(200, s) for s in range(3)]  # 600 tokens, context 256
    out = pcw_generate(tiny, windows, _seq(4, 9), 5)
    assert len(out) == 5


def test_bad_input(tiny):
    with pytest.raises(ValueError, match="exceeds the model's context"):
        ParallelContext(tiny, [_seq(250, 1)], 10)
    with pytest.raises(ValueError, match="none of them empty"):
        ParallelContext(tiny, [[]], 10)
    with pytest.raises(ValueError, match="max_task_tokens"):
        ParallelContext(tiny, [_seq(5, 1)], 2).append(_seq(3, 2))
