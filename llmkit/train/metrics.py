"""Run metrics: ``metrics.jsonl`` (one JSON object per record) and ``curves.png``.

Training records hold ``step, loss, lr, grad_norm, tok_per_s, tokens``;
evaluation records hold ``step, val_loss, val_ppl`` and, when the bytes per
token of the validation text are known, ``val_bpb``. JSON lines because
they append cheaply, survive a crash up to the last line, and load with
``pandas.read_json(path, lines=True)``.

On resume the file is cut back to the checkpoint's step, so the steps a
killed run logged after its last checkpoint (and will now redo) appear once.

The plot (training and validation loss, learning rate, against the step) is
drawn with matplotlib's Agg backend, imported only when plotting; without
matplotlib the run goes on and says once how to get the plot.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only JSON-lines metrics file.

    Args:
        path: the ``metrics.jsonl`` file.
        resume_step: keep only records with ``step <= resume_step``; None starts a new file.
    """

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in self.read() if r["step"] <= resume_step] if resume_step is not None else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> bool:
    """Draw loss and learning-rate curves to ``path``; False (and a message) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("llmkit train: matplotlib is not installed, so no curves.png (pip install 'llmkit[plot]')")
        return False
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", linewidth=1)
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
    ax_loss.set(xlabel="step", ylabel="loss (nats/token)", title="loss")
    ax_loss.legend()
    ax_lr.plot([r["step"] for r in train], [r["lr"] for r in train])
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
