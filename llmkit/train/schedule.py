"""Learning-rate schedules as pure functions of the step.

Each schedule maps ``(step, lr, min_lr, warmup, max_steps)`` to a learning
rate, so a resumed run needs no scheduler state beyond the step counter, and
each shape is testable at chosen points. Every schedule starts with the same
linear warmup, ``lr * (step + 1) / warmup`` for ``step < warmup`` (the first
step already moves, the last warmup step reaches ``lr``), then:

- ``cosine``: half a cosine from ``lr`` to ``min_lr`` at ``max_steps``
  (Loshchilov & Hutter 2017; the GPT-3/LLaMA default).
- ``linear``: a straight line from ``lr`` to ``min_lr`` at ``max_steps``.
- ``constant``: ``lr`` throughout.
- ``wsd`` (warmup-stable-decay; MiniCPM, Hu et al. 2024): ``lr`` until the
  last ``decay_fraction`` of the run, then linearly down to ``min_lr``.
  Because the stable phase does not depend on ``max_steps``, a run can be
  extended (``--resume`` with a larger ``max_steps``) without changing the
  steps already taken, which cosine cannot offer. For the same reason a
  run can be sized while it runs (:func:`refit_wsd`; ``Trainer.fit(time_limit=...)``).
"""
from __future__ import annotations

import math
from collections.abc import Callable


def _warmup(step: int, lr: float, warmup: int) -> float | None:
    return lr * (step + 1) / warmup if step < warmup else None


def _progress(step: int, start: int, end: int) -> float:
    """Fraction of ``[start, end]`` covered at ``step``, clamped to [0, 1]."""
    return min(max((step - start) / max(end - start, 1), 0.0), 1.0)


def cosine(step: int, lr: float, min_lr: float, warmup: int, max_steps: int, decay_fraction: float = 0.2) -> float:
    if (w := _warmup(step, lr, warmup)) is not None:
        return w
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * _progress(step, warmup, max_steps))) * (lr - min_lr)


def linear(step: int, lr: float, min_lr: float, warmup: int, max_steps: int, decay_fraction: float = 0.2) -> float:
    if (w := _warmup(step, lr, warmup)) is not None:
        return w
    return lr - (lr - min_lr) * _progress(step, warmup, max_steps)


def constant(step: int, lr: float, min_lr: float, warmup: int, max_steps: int, decay_fraction: float = 0.2) -> float:
    if (w := _warmup(step, lr, warmup)) is not None:
        return w
    return lr


def decay_start(max_steps: int, warmup: int, decay_fraction: float) -> int:
    """WSD's first decaying step; the rates of this and every earlier step do not depend on ``max_steps``."""
    return max(warmup, max_steps - round(decay_fraction * max_steps))


def wsd(step: int, lr: float, min_lr: float, warmup: int, max_steps: int, decay_fraction: float = 0.2) -> float:
    if (w := _warmup(step, lr, warmup)) is not None:
        return w
    return lr - (lr - min_lr) * _progress(step, decay_start(max_steps, warmup, decay_fraction), max_steps)


SCHEDULES: dict[str, Callable[..., float]] = {"cosine": cosine, "linear": linear, "constant": constant, "wsd": wsd}


def refit_wsd(cfg, step: int, wanted: int) -> int:
    """A new ``max_steps`` for a WSD run that has taken ``step`` steps and would like ``wanted`` in all.

    While the decay has not begun, any ``max_steps`` whose decay still starts after ``step`` leaves the
    rates of the steps taken (and of the next) unchanged, so the result is ``wanted`` raised to the least
    such length. Once the decay has begun its length is fixed and ``cfg.max_steps`` is returned.

    Args:
        cfg: the run's :class:`~llmkit.train.config.TrainConfig` (``schedule="wsd"``).
        step: steps taken so far.
        wanted: the run length the caller would like, e.g. what fits a time budget.
    """
    if step >= decay_start(cfg.max_steps, cfg.warmup_steps, cfg.decay_fraction):
        return cfg.max_steps
    if step < cfg.warmup_steps:  # the decay cannot start before the warmup ends, whatever max_steps is
        return max(wanted, step + 1)
    # decay_start(t) >= (1 - f) * t - 0.5, so t >= (step + 1) / (1 - f) starts the decay after ``step``
    # (f < 1 here: with f = 1 the decay starts at the end of the warmup, which has passed)
    return max(wanted, math.ceil((step + 1) / (1 - cfg.decay_fraction)))


def lr_at(step: int, cfg) -> float:
    """Learning rate of optimizer step ``step`` (0-based) under a :class:`~llmkit.train.config.TrainConfig`."""
    return SCHEDULES[cfg.schedule](step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps, cfg.decay_fraction)
