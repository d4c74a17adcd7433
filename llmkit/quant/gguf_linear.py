"""Layers that keep llama.cpp's quantised blocks as they are in the GGUF file.

:class:`GGUFLinear` is a :class:`~llmkit.quant.linear.QuantLinear` (so LoRA wraps
it, ``to_linear()`` and ``dequantize()`` work as for every quantised layer)
whose ``weight`` buffer is the file's tensor: (out_features, row_bytes) uint8,
each row ``in_features / block_size`` blocks of one
:data:`~llmkit.quant.gguf_types.GGUF_TYPES` layout. Its forward is the
``llmkit::gguf_mm`` operator (:mod:`llmkit.quant.gguf_ops`), which reads the
blocks directly and carries its own input-gradient formula, so the layer
trains through (frozen) and compiles without graph breaks.

:class:`GGUFEmbedding` does the same for the token embedding: a lookup gathers
the token's block rows and dequantises only those. When the embedding is tied
to the LM head both modules share one ``weight`` buffer, as llama.cpp does.

The buffer is called ``weight`` (as gpt-fast's int8 layer calls its int8
matrix) so the state dict keeps HF names; it is not a float matrix, and code
that wants one calls ``dequantize()``.
"""
from __future__ import annotations

import torch
from torch import nn

from llmkit.quant.gguf_ops import gguf_dequantize, gguf_linear
from llmkit.quant.gguf_types import gguf_type, quantize_blocks
from llmkit.quant.linear import QuantLinear


class GGUFLinear(QuantLinear):
    """A frozen linear layer whose weight is GGUF blocks (Q8_0, Q4_0, Q4_1, Q4_K or Q6_K).

    Args:
        in_features, out_features: the float layer's; ``in_features`` a multiple of the block size.
        qtype: the layout, by name (``"q4_1"``) or ggml type id.
        bias: keep a (frozen) float bias.
        dtype: the bias's dtype and ``dequantize()``'s; activations keep their own dtype.
        device: where the buffers go (``meta`` when the loader builds the model).
        int8_activations: decode with llama.cpp's int8-rounded activations (faster; each product
            off by ~0.5%) instead of exact fp32 products; see :func:`~llmkit.quant.gguf_ops.gguf_linear`.
    """

    def __init__(self, in_features: int, out_features: int, qtype: str | int, bias: bool = False,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 int8_activations: bool = False):
        super().__init__(in_features, out_features, bias, dtype, device=device)
        self.qtype, self.int8_activations = gguf_type(qtype).name, int8_activations
        row_bytes = gguf_type(qtype).row_bytes(in_features)
        self.register_buffer("weight", torch.zeros(out_features, row_bytes, dtype=torch.uint8, device=device))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, qtype: str | int) -> "GGUFLinear":
        """Quantise a float linear with ggml's rounding (q8_0, q4_0 or q4_1)."""
        layer = cls(linear.in_features, linear.out_features, qtype, linear.bias is not None,
                    linear.weight.dtype, linear.weight.device)
        layer.weight.copy_(quantize_blocks(linear.weight, qtype))
        layer._copy_float(linear, None)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out), in x's dtype
        return gguf_linear(x, self.weight, self.qtype, self.in_features, self.bias, self.int8_activations)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        return gguf_linear(x, self.weight, self.qtype, self.in_features, int8_activations=self.int8_activations)

    def _weight(self) -> torch.Tensor:
        return gguf_dequantize(self.weight, self.qtype, self.in_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype}, "
                f"bias={self.bias is not None}, int8_activations={self.int8_activations}")


class GGUFEmbedding(nn.Module):
    """A frozen token embedding whose table is GGUF blocks; a lookup dequantises only the rows it gathers.

    Args:
        num_embeddings, embedding_dim: the table's shape; ``embedding_dim`` a multiple of the block size.
        qtype: the layout, by name or ggml type id.
        dtype: the dtype of the looked-up vectors (the model's activation dtype); ``module.to(dtype)``
            changes it, as it would a float table's.
        device: where the table goes.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, qtype: str | int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.qtype = gguf_type(qtype).name
        # an empty float tensor that .to() casts like any float buffer: it carries the output dtype
        self.register_buffer("dtype_probe", torch.empty(0, dtype=dtype, device=device), persistent=False)
        row_bytes = gguf_type(qtype).row_bytes(embedding_dim)
        self.register_buffer("weight", torch.zeros(num_embeddings, row_bytes, dtype=torch.uint8, device=device))

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.dtype_probe.dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (...) -> (..., embedding_dim)
        return gguf_dequantize(self.weight[ids], self.qtype, self.embedding_dim, self.compute_dtype)

    def dequantize(self) -> torch.Tensor:
        """The float table (num_embeddings, embedding_dim) in ``compute_dtype``."""
        return gguf_dequantize(self.weight, self.qtype, self.embedding_dim, self.compute_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, qtype={self.qtype}"
