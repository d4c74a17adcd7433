"""``llmkit bench``: an llmperf-style load generator for any OpenAI-compatible endpoint.

``workload.py`` draws llmperf's requests, ``client.py`` times one,
``run.py`` drives each concurrency (:func:`run_bench`), ``report.py`` computes
the percentiles and writes ``summary.json``, ``individual_responses.json`` and
the PNGs.
"""
from llmkit.bench.run import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]
