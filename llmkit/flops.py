"""Moved to :mod:`llmkit.estimate.flops`; kept only until ``llmkit/speedrun.py`` imports from there, then deleted."""
from llmkit.estimate.flops import measure_peak_flops, train_flops_per_token

__all__ = ["measure_peak_flops", "train_flops_per_token"]
