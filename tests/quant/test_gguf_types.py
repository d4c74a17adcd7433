"""GGUF block layouts: our torch dequantisers equal the gguf package's (ggml's reference), and quantising rounds as ggml."""
import gguf
import numpy as np
import pytest
import torch

from llmkit.quant.gguf_types import GGUF_TYPES, dequantize_blocks, gguf_type, quantize_blocks
from tests.quant.gguf_blocks import random_blocks


@pytest.mark.parametrize("qtype", GGUF_TYPES)
def test_dequantize_equals_the_gguf_reference(qtype):
    blocks = random_blocks(qtype, 5, 512)
    ref = gguf.dequantize(blocks.numpy(), gguf.GGMLQuantizationType(GGUF_TYPES[qtype].ggml_type))
    ours = dequantize_blocks(blocks.reshape(5, 1, -1), qtype, 512)  # leading dims are kept
    assert ours.shape == (5, 1, 512) and ours.dtype == torch.float32
    np.testing.assert_array_equal(ours.reshape(5, 512).numpy(), ref.reshape(5, 512))


@pytest.mark.parametrize("qtype", [n for n, t in GGUF_TYPES.items() if t.can_quantize])
def test_quantize_round_trip_error_is_within_half_a_step(qtype):
    w = torch.randn(8, 256, generator=torch.Generator().manual_seed(0))
    blocks = quantize_blocks(w, qtype)
    assert blocks.shape == (8, GGUF_TYPES[qtype].row_bytes(256)) and blocks.dtype == torch.uint8
    err = (dequantize_blocks(blocks, qtype, 256) - w).abs().view(8, 8, 32)
    span = w.view(8, 8, 32)
    levels = {"q8_0": 254, "q4_0": 15, "q4_1": 15}[qtype]  # steps across a block's range
    step = (span.amax(-1) - span.amin(-1) if qtype == "q4_1" else 2 * span.abs().amax(-1)) / levels
    # half a step of rounding, plus the fp16 rounding of the scale (and Q4_0's asymmetric -8..7 grid)
    assert (err <= step[..., None] * (1.0 if qtype == "q4_0" else 0.5) + 1e-2).all()


def test_lookup_and_errors():
    assert gguf_type("Q4_1") is gguf_type(3) is GGUF_TYPES["q4_1"]
    with pytest.raises(ValueError, match="no native kernel; native types: q8_0"):
        gguf_type("q5_0")
    with pytest.raises(ValueError, match="not a whole number of 256-weight blocks"):
        GGUF_TYPES["q6_k"].row_bytes(576)
    with pytest.raises(ValueError, match="cannot quantise to q4_k"):
        quantize_blocks(torch.randn(2, 256), "q4_k")
    with pytest.raises(ValueError, match="rows of 34 bytes"):
        dequantize_blocks(torch.zeros(2, 30, dtype=torch.uint8), "q8_0", 32)
