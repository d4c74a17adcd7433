"""Per-run statistics of request records, and the files ``llmkit bench`` writes (JSON and PNG).

For each metric: p25/p50/p75/p90/p95/p99, mean, min and max over the
successful requests that have it (TTFT and inter-token latency need a stream,
and the latter two or more tokens). Per run: mean output throughput (output
tokens of the run / its wall time), completed requests per minute, error rate.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from llmkit.io.atomic import atomic_path, atomic_write_text

METRICS = ("ttft_s", "inter_token_latency_s", "end_to_end_latency_s", "request_output_throughput_token_per_s",
           "number_input_tokens", "number_output_tokens")
QUANTILES = (25, 50, 75, 90, 95, 99)


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), ``q`` in [0, 100]."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def describe(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {**{f"p{q}": None for q in QUANTILES}, "mean": None, "min": None, "max": None}
    return {**{f"p{q}": quantile(values, q) for q in QUANTILES}, "mean": sum(values) / len(values),
            "min": min(values), "max": max(values)}


def summarize(records: list[dict[str, Any]], duration_s: float, concurrency: int) -> dict[str, Any]:
    """One run's summary (see the module docstring)."""
    ok = [r for r in records if r["error_code"] is None]
    out: dict[str, Any] = {"concurrency": concurrency, "num_requests": len(records),
                           "num_completed_requests": len(ok), "num_errors": len(records) - len(ok),
                           "duration_s": duration_s}
    for m in METRICS:
        out[m] = describe([r[m] for r in ok if r[m] is not None])
    out["mean_output_throughput_token_per_s"] = sum(r["number_output_tokens"] for r in ok) / duration_s
    out["num_completed_requests_per_min"] = len(ok) / duration_s * 60
    out["error_rate"] = (len(records) - len(ok)) / len(records) if records else 0.0
    codes: dict[str, int] = {}
    for r in records:
        if r["error_code"] is not None:
            codes[str(r["error_code"])] = codes.get(str(r["error_code"]), 0) + 1
    out["error_codes"] = codes
    return out


def write(out_dir: Path, meta: dict[str, Any], runs: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """``summary.json``, ``individual_responses.json`` and the two PNGs under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "summary.json", json.dumps({**meta, "runs": runs}, indent=2))
    atomic_write_text(out_dir / "individual_responses.json", json.dumps(records, indent=2))
    plot(out_dir, meta, runs)


def plot(out_dir: Path, meta: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conc = [r["concurrency"] for r in runs]
    title = f"{meta.get('model')} @ {meta.get('url')}"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, metric, label in zip(axes, ("ttft_s", "inter_token_latency_s", "end_to_end_latency_s"),
                                 ("time to first token (s)", "inter-token latency (s)", "end-to-end latency (s)")):
        for q, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:")):
            ys = [r[metric][q] for r in runs]
            if any(y is not None for y in ys):
                ax.plot(conc, [math.nan if y is None else y for y in ys], style, label=q)
        ax.set(xscale="log", xlabel="concurrency", ylabel=label, xticks=conc, xticklabels=[str(c) for c in conc])
        ax.grid(alpha=0.3)
        if ax.lines:  # nothing to draw when every request of the run failed
            ax.legend()
    fig.suptitle(f"latency percentiles: {title}")
    fig.tight_layout()
    with atomic_path(out_dir / "latency_percentiles.png") as p:
        fig.savefig(p, dpi=110, format="png")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.plot(conc, [r["mean_output_throughput_token_per_s"] for r in runs], "o-")
    ax.set(xscale="log", xlabel="concurrency", ylabel="output tokens / s", xticks=conc,
           xticklabels=[str(c) for c in conc], title=f"throughput: {title}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_dir / "throughput.png") as p:
        fig.savefig(p, dpi=110, format="png")
    plt.close(fig)
