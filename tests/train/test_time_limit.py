"""``Trainer.fit(time_limit=...)`` on a fake clock: the run fills the time, decays fully, and never rewrites a step."""
import json
import types

import pytest

from llmkit.train import Data, Trainer
from llmkit.train.schedule import decay_start, lr_at, refit_wsd

from .helpers import RandomBatches, tiny_cfg

LR, MIN_LR = 3e-3, 3e-4


class Clock:
    """Fake ``time.perf_counter``: advances only when a batch is drawn, by ``seconds(step)``."""

    def __init__(self, seconds):
        self.now, self.seconds, self.steps = 0.0, seconds, 0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += self.seconds(self.steps)
        self.steps += 1


class ClockedBatches(RandomBatches):
    def __init__(self, clock: Clock):
        super().__init__()
        self.clock = clock

    def __next__(self):
        self.clock.tick()
        return super().__next__()


def _fit(tmp_path, monkeypatch, seconds, time_limit, min_steps=0, **overrides):
    clock = Clock(seconds)
    monkeypatch.setattr("llmkit.train.trainer.time", types.SimpleNamespace(perf_counter=clock))
    cfg = tiny_cfg(tmp_path, schedule="wsd", decay_fraction=0.3, lr=LR, min_lr=MIN_LR, warmup_steps=2,
                   **{"max_steps": 10_000, **overrides})
    trainer = Trainer(cfg, data=Data(ClockedBatches(clock)))
    result = trainer.fit(time_limit=time_limit, min_steps=min_steps)
    records = [json.loads(line) for line in (trainer.out / "metrics.jsonl").read_text().splitlines()]
    return trainer, result, clock, [r for r in records if "lr" in r]


def _check_schedule(trainer, records):
    """Every step ran at the final schedule's rate, which ends with a whole decay down near min_lr."""
    cfg = trainer.cfg
    assert [r["step"] for r in records] == list(range(1, cfg.max_steps + 1))
    assert all(r["lr"] == pytest.approx(lr_at(r["step"] - 1, cfg), abs=0, rel=1e-12) for r in records)
    start = decay_start(cfg.max_steps, cfg.warmup_steps, cfg.decay_fraction)
    assert cfg.max_steps - start == round(0.3 * cfg.max_steps)  # the decay was not cut short
    assert records[-1]["lr"] <= MIN_LR + (LR - MIN_LR) / (cfg.max_steps - start) + 1e-12


def test_the_run_ends_at_the_time_limit_and_decays_fully(tmp_path, monkeypatch):
    trainer, result, clock, records = _fit(tmp_path, monkeypatch, lambda step: 1.0, time_limit=40.0)
    assert result.step == trainer.cfg.max_steps == 40 and clock.now == pytest.approx(40.0)
    _check_schedule(trainer, records)
    assert (trainer.out / "model").is_dir()  # a completed run: exported as without a time limit


def test_a_slowdown_before_the_decay_shortens_the_run_to_still_fit(tmp_path, monkeypatch):
    # 1 s per step, then 3 s from step 10: the estimate follows the mean time per step
    trainer, result, clock, records = _fit(tmp_path, monkeypatch, lambda step: 1.0 if step < 10 else 3.0,
                                           time_limit=90.0)
    assert result.step <= 40  # at 1 s per step it would have been 90
    assert abs(clock.now - 90.0) <= 4 * 3.0  # the mean lags the slowdown: a few slow steps over at most
    _check_schedule(trainer, records)


def test_max_steps_caps_and_min_steps_floors_the_run(tmp_path, monkeypatch):
    trainer, result, _, records = _fit(tmp_path / "cap", monkeypatch, lambda step: 1.0, time_limit=1e6,
                                       max_steps=20)
    assert result.step == 20
    _check_schedule(trainer, records)
    trainer, result, clock, records = _fit(tmp_path / "floor", monkeypatch, lambda step: 1.0, time_limit=0.0,
                                           min_steps=12)
    assert result.step == 12 and clock.now == 12.0
    _check_schedule(trainer, records)


def test_a_time_limit_needs_wsd(tmp_path):
    trainer = Trainer(tiny_cfg(tmp_path, schedule="cosine"), data=Data(RandomBatches()))
    with pytest.raises(ValueError, match="schedule='wsd'"):
        trainer.fit(time_limit=10.0)
    assert trainer.step == 0


def test_refit_wsd_never_moves_the_decay_onto_a_step_taken(tmp_path):
    cfg = tiny_cfg(tmp_path, schedule="wsd", decay_fraction=0.3, warmup_steps=5, max_steps=1000)
    for step in range(0, 700, 7):
        for wanted in (0, step, step + 1, 2 * step, 5000):
            new = refit_wsd(cfg, step, wanted)
            refitted = cfg.__class__.from_dict({**cfg.to_dict(), "max_steps": new})
            assert new >= wanted and decay_start(new, 5, 0.3) > step
            assert all(lr_at(s, cfg) == lr_at(s, refitted) for s in range(step + 1))
    assert refit_wsd(cfg, 700, 5000) == 1000  # step 700 is the decay's first: the length is fixed
