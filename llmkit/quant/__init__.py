"""Quantisation: ``quantize(model, scheme)`` swaps ``nn.Linear`` layers for quantised ones (gpt-fast style).

- ``primitives.py``: affine int quantisation per tensor / channel / group, int4 packing, fp8 casts.
- ``linear.py``: ``QuantLinear`` (what every quantised layer offers) and the weight-only
  ``Int8Linear`` / ``Int4Linear`` (torch's CPU int8/int4 kernels) and ``Fp8Linear``.
- ``nf4.py``: QLoRA's NF4 with double quantisation, ``Linear4bit``.
- ``w8a8.py``: int8 x int8 layers, ``W8A8Linear`` and LLM.int8()'s ``LLMInt8Linear``.
- ``smoothquant.py``, ``gptq.py``, ``awq.py``: the calibrated algorithms; ``calibrate.py`` feeds them.
- ``schemes.py``: the ``QUANT_SCHEMES`` registry, ``quantize`` and ``rebuild`` (for loading).
- ``qat.py``: quantisation-aware training with fake-quant linears.

See docs/quantization.md.
"""
from llmkit.quant.linear import Fp8Linear, Int4Linear, Int8Linear, QuantLinear
from llmkit.quant.nf4 import Linear4bit
from llmkit.quant.qat import FakeQuantLinear, convert_qat, prepare_qat
from llmkit.quant.schemes import QUANT_SCHEMES, QuantScheme, quantize, rebuild
from llmkit.quant.w8a8 import LLMInt8Linear, W8A8Linear

__all__ = ["QUANT_SCHEMES", "FakeQuantLinear", "Fp8Linear", "Int4Linear", "Int8Linear", "LLMInt8Linear", "Linear4bit", "QuantLinear",
           "QuantScheme", "W8A8Linear", "convert_qat", "prepare_qat", "quantize", "rebuild"]
