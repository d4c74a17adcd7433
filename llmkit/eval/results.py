"""What every ``llmkit eval`` task reports: metric rows, ``results.json``, a table and a JSON summary.

A task produces a :class:`Report`: its metrics (value and standard error, None
where the metric has none), extra facts worth keeping (token counts, per-cell
grids) and the settings it ran with. ``results.json`` holds one row per
metric with ``task, metric, value, stderr, model, settings``, so results of
many runs concatenate into one table; ``summary()`` is the flat JSON object
``--json`` prints for scripts.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.io.atomic import atomic_write_text


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean, as lm-eval-harness computes it (sample std / sqrt(n)); 0 for n < 2."""
    n = len(values)
    if n < 2:
        return 0.0
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


@dataclass(frozen=True)
class Report:
    task: str
    model: str
    metrics: dict[str, tuple[float, float | None]]  # name -> (value, stderr)
    settings: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One ``{task, metric, value, stderr, model, settings}`` dict per metric."""
        return [dict(task=self.task, metric=name, value=value, stderr=stderr, model=self.model,
                     settings=self.settings) for name, (value, stderr) in self.metrics.items()]

    def summary(self) -> dict[str, Any]:
        """``{task, model, <metric>: value, ..., <extras>, stderr: {metric: stderr}, settings}``."""
        return {"task": self.task, "model": self.model, **{k: v for k, (v, _) in self.metrics.items()},
                **self.extras, "stderr": {k: s for k, (_, s) in self.metrics.items() if s is not None},
                "settings": self.settings}

    def table(self) -> str:
        """The metrics as an aligned text table."""
        rows = [("task", "metric", "value", "stderr")] + [
            (self.task, name, f"{value:.4f}", "" if stderr is None else f"{stderr:.4f}")
            for name, (value, stderr) in self.metrics.items()]
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        return "\n".join("  ".join(cell.ljust(w) if c < 2 else cell.rjust(w) for c, (cell, w) in
                                   enumerate(zip(row, widths))).rstrip() for row in rows)

    def write(self, out_dir: str | Path) -> Path:
        """Write ``out_dir/results.json`` (atomically) and return its path."""
        path = Path(out_dir) / "results.json"
        atomic_write_text(path, json.dumps(self.rows(), indent=2) + "\n")
        return path
