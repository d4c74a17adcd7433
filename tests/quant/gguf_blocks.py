"""Shared by the GGUF tests: random but valid block rows of every native layout."""
import torch

from llmkit.quant.gguf_types import GGUF_TYPES, quantize_blocks


def random_blocks(qtype: str, rows: int, in_features: int, seed: int = 0) -> torch.Tensor:
    """(rows, row_bytes) uint8 blocks of ``qtype``.

    Quantisable types quantise Gaussian weights; the K-quants (which the gguf package cannot
    quantise to) get random bytes with small positive fp16 super-block scales, which exercises
    every bit of their packed scales and high bits.
    """
    g = torch.Generator().manual_seed(seed)
    t = GGUF_TYPES[qtype]
    if t.can_quantize:
        return quantize_blocks(torch.randn(rows, in_features, generator=g), qtype)
    raw = torch.randint(0, 256, (rows, in_features // t.block_size, t.type_size), generator=g, dtype=torch.uint8)
    scale = (torch.rand(rows, in_features // t.block_size, 1, generator=g) * 0.01 + 1e-3).half().view(torch.uint8)
    for offset in ((208,) if qtype == "q6_k" else (0, 2)):  # Q6_K: d last; Q4_K: d and dmin first
        raw[..., offset:offset + 2] = scale
    return raw.reshape(rows, -1)
