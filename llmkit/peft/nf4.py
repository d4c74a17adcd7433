"""Moved to :mod:`llmkit.quant.nf4`; this module re-exports it so existing imports keep working."""
from llmkit.quant.nf4 import (FP8_MAX, NF4_CODE, dequantize_absmax, dequantize_nf4, nf4_code, quantize_absmax,
                              quantize_nf4)

__all__ = ["FP8_MAX", "NF4_CODE", "dequantize_absmax", "dequantize_nf4", "nf4_code", "quantize_absmax", "quantize_nf4"]
