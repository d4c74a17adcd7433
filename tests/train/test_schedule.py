"""Learning-rate schedules at chosen steps."""
import math

import pytest

from llmkit.train.schedule import SCHEDULES, constant, cosine, linear, lr_at, wsd

from .helpers import tiny_cfg

LR, MIN, WARM, TOTAL = 1.0, 0.1, 10, 110


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_warmup_is_linear_and_reaches_lr(name):
    f = SCHEDULES[name]
    assert f(0, LR, MIN, WARM, TOTAL) == pytest.approx(0.1)
    assert f(4, LR, MIN, WARM, TOTAL) == pytest.approx(0.5)
    assert f(9, LR, MIN, WARM, TOTAL) == pytest.approx(1.0)
    assert f(10, LR, MIN, WARM, TOTAL) == pytest.approx(1.0)  # first step after warmup


def test_cosine_points():
    assert cosine(60, LR, MIN, WARM, TOTAL) == pytest.approx(MIN + 0.5 * (LR - MIN))  # half way
    assert cosine(35, LR, MIN, WARM, TOTAL) == pytest.approx(MIN + 0.5 * (1 + math.cos(math.pi / 4)) * (LR - MIN))
    assert cosine(110, LR, MIN, WARM, TOTAL) == pytest.approx(MIN)
    assert cosine(500, LR, MIN, WARM, TOTAL) == pytest.approx(MIN)  # past the end: stays at min_lr


def test_linear_points():
    assert linear(60, LR, MIN, WARM, TOTAL) == pytest.approx(0.55)
    assert linear(110, LR, MIN, WARM, TOTAL) == pytest.approx(MIN)


def test_constant_after_warmup():
    assert constant(10, LR, MIN, WARM, TOTAL) == constant(109, LR, MIN, WARM, TOTAL) == LR


def test_wsd_stable_then_decays_over_the_last_fraction():
    # decay_fraction 0.2 of 110 steps: 22 steps of decay starting at step 88
    assert wsd(50, LR, MIN, WARM, TOTAL, 0.2) == LR
    assert wsd(88, LR, MIN, WARM, TOTAL, 0.2) == LR
    assert wsd(99, LR, MIN, WARM, TOTAL, 0.2) == pytest.approx(LR - (LR - MIN) * 0.5)
    assert wsd(110, LR, MIN, WARM, TOTAL, 0.2) == pytest.approx(MIN)
    # extending the run leaves the stable phase (all steps already taken) unchanged
    assert all(wsd(s, LR, MIN, WARM, 220, 0.2) == wsd(s, LR, MIN, WARM, TOTAL, 0.2) for s in range(88))


def test_no_warmup():
    assert cosine(0, LR, MIN, 0, TOTAL) == pytest.approx(LR)


def test_lr_at_uses_the_config(tmp_path):
    cfg = tiny_cfg(tmp_path, schedule="linear", lr=2.0, min_lr=0.0, warmup_steps=0, max_steps=10)
    assert lr_at(5, cfg) == pytest.approx(1.0)
