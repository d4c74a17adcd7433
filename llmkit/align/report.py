"""What an alignment run leaves behind for a reader: ``curves.png`` and ``report.md``.

The curves are drawn from the Trainer's ``metrics.jsonl``: one panel per
family of numbers that shows the method working -- the loss; rewards and
margins; accuracies (training and held-out); KL to the reference and
completion length (online methods). Only panels with data are drawn.
``report.md`` puts the held-out metrics before and after side by side (with
a 95% interval for accuracies over ``n`` held-out items), the exact command
to rerun, and the before/after samples.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from llmkit.io.atomic import atomic_write_text

PANELS = {
    "loss": ("loss", "val_loss", "policy_loss", "value_loss"),
    "reward": ("reward", "reward_chosen", "reward_rejected", "margin", "val_reward", "val_reward_chosen",
               "val_reward_rejected", "val_margin"),
    "accuracy": ("accuracy", "reward_acc", "val_accuracy", "val_reward_acc", "val_pref_acc"),
    "KL / length": ("kl", "val_kl", "kl_coef", "completion_len"),
}


def plot_align_curves(records: list[dict[str, Any]], path: str | Path) -> bool:
    """Draw the panels that have data to ``path``; False (and a message) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("llmkit align: matplotlib is not installed, so no curves.png (pip install 'llmkit[plot]')")
        return False
    panels = {title: [k for k in keys if any(k in r for r in records)] for title, keys in PANELS.items()}
    panels = {t: ks for t, ks in panels.items() if ks}
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.5 * max(len(panels), 1), 3.8), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels.items()):
        for k in keys:
            pts = [(r["step"], r[k]) for r in records if k in r]
            ax.plot(*zip(*pts), "o-" if k.startswith("val_") else "-", label=k, linewidth=1, markersize=3)
        ax.set(xlabel="step", title=title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def interval(p: float, n: int) -> float:
    """Half-width of the normal-approximation 95% interval of a proportion ``p`` over ``n`` items."""
    return 1.96 * math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def write_report(path: str | Path, report: dict[str, Any], command: str) -> None:
    """``report.md``: metrics before/after, the command, samples."""
    before, after = report["before"], report["after"]
    n = int(after.get("val_n", 0))
    lines = [f"# llmkit align {report['config']['method']}", "", f"Model `{report['config']['model']}`, data "
             f"`{report['data']}`, {report['steps']} steps in {report['train_seconds']} s.", "", "```",
             command, "```", "", "| held-out metric | before | after |", "|---|---|---|"]
    for k in sorted(set(before) | set(after)):
        if k == "val_n":
            continue
        b, a = before.get(k), after.get(k)
        ci = f" ± {interval(a, n):.3f}" if "acc" in k and a is not None and n else ""
        lines.append(f"| {k} | {'' if b is None else f'{b:.4f}'} | {'' if a is None else f'{a:.4f}'}{ci} |")
    if n:
        lines += ["", f"Accuracies over {n} held-out items; ± is the 95% normal-approximation interval."]
    if report.get("samples"):
        lines += ["", "## Samples (greedy)", ""]
        for s in report["samples"]:
            lines += [f"**Prompt:** {s['prompt']}", "", f"- before: {s['before']!r}", f"- after: {s['after']!r}", ""]
    lines += ["", "Curves: `curves.png`; every step: `train/metrics.jsonl`."]
    atomic_write_text(path, "\n".join(lines) + "\n")
