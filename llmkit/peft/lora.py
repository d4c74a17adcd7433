"""LoRA wrappers for linear, embedding and 2-D convolution layers, with rsLoRA, DoRA and PiSSA.

LoRA (Hu et al. 2021, arXiv:2106.09685) freezes a weight W (out, in) and learns
a low-rank update: y = W x + s * B A x, with A (r, in), B (out, r) and scale
s = alpha / r. B starts at zero, so a fresh adapter is the identity, and A
starts kaiming-uniform (peft's default) or N(0, 1/r) ("gaussian").

Variants, all selected by arguments of the same wrappers:
- rsLoRA (Kalajdzievski 2023, arXiv:2312.03732): s = alpha / sqrt(r), which keeps
  the update's scale stable as r grows.
- DoRA (Liu et al. 2024, arXiv:2402.09353): W' = m * (W + s B A) / ||W + s B A||_row
  with a learned magnitude m (out,) initialised to the row norms of W. As in the
  paper's section 4.3 and in peft, the norm is detached from the graph, so it
  acts as a constant in backprop.
- PiSSA (Meng et al. 2024, arXiv:2404.02948): A and B start from the top-r
  singular triplets of W and those are subtracted from W, so training moves the
  principal components while the residual stays frozen; the output is unchanged.

Design: each wrapper keeps the original module as ``base_layer`` (peft's
``lora/layer.py`` idea), so merging is an in-place add to ``base_layer.weight``,
unmerging the matching subtract, disabling is "return the base output", and a
quantised base (``Linear4bit``) slots in unchanged. Parameter names equal
peft's saved names (``lora_A.weight``, ``lora_B.weight``, ``lora_magnitude_vector``,
``lora_embedding_A``/``lora_embedding_B``), so the peft file format is a plain
prefix away. There is one adapter per wrapper (no named-adapter dicts).

Adapter weights are float32 whatever the base dtype (peft's default,
``autocast_adapter_dtype``), so the optimizer updates them in full precision
even on a bf16 or 4-bit base; inputs are cast to it and the sum back to the
base output's dtype.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.peft.base import Adapter, module_device

LORA_INITS = ("default", "gaussian", "pissa")


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The weight of a linear-like layer, dequantised when the layer stores it quantised (``Linear4bit``)."""
    return layer.dequantize() if hasattr(layer, "dequantize") else layer.weight


def float_weight(layer: nn.Module, purpose: str) -> torch.Tensor:
    """``layer.weight`` if it is a floating-point tensor that can be changed in place, else TypeError."""
    w = getattr(layer, "weight", None)
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise TypeError(f"{purpose} needs a floating-point base weight, and a {type(layer).__name__} has none "
                        "(for a 4-bit base: merge_and_unload dequantises first; PiSSA goes before "
                        "quantize_model_4bit)")
    return w


def _init_pair(a: torch.Tensor, b: torch.Tensor, init: str, r: int) -> None:
    """LoRA's asymmetric init: B = 0 (fresh adapter is the identity), A random."""
    if init == "default":
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # nn.Linear's own init, as in the LoRA reference code
    elif init == "gaussian":
        nn.init.normal_(a, std=1.0 / r)
    else:
        raise ValueError(f"init={init!r}: this layer supports 'default' or 'gaussian'")
    nn.init.zeros_(b)


class LoRALayer(Adapter):
    """What the LoRA wrappers share: rank, scale, merge state and the in-place merge of ``delta_weight``."""

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, use_rslora: bool):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r={r} must be positive")
        self.base_layer = base_layer
        self.r, self.lora_alpha, self.use_rslora = r, alpha, use_rslora
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """s * (B A) in the base weight's layout, float32."""
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into ``base_layer.weight``; forward then runs the base alone."""
        if not self.merged:
            w = float_weight(self.base_layer, "merge")
            w.add_(self.delta_weight().to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (exact up to float rounding of the add and subtract)."""
        if self.merged:
            w = float_weight(self.base_layer, "merge")
            w.sub_(self.delta_weight().to(w.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.lora_alpha}, scaling={self.scaling:.4g}, merged={self.merged}"


class LoRALinear(LoRALayer):
    """LoRA (optionally DoRA) around an ``nn.Linear`` or any layer with ``in_features``/``out_features``/
    ``weight`` or ``dequantize()`` (``Linear4bit``).

    Args:
        base_layer: the frozen layer; kept as ``self.base_layer``.
        r: rank of the update.
        alpha: scale numerator (s = alpha / r, or alpha / sqrt(r) with ``use_rslora``).
        dropout: dropout on the adapter's input only.
        use_rslora: rank-stabilised scaling.
        use_dora: weight-decomposed LoRA (adds ``lora_magnitude_vector``).
        init: "default" (kaiming-uniform A), "gaussian" (A ~ N(0, 1/r)) or "pissa" (SVD; changes the base weight).
    """

    def __init__(self, base_layer: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                 use_rslora: bool = False, use_dora: bool = False, init: str = "default"):
        super().__init__(base_layer, r, alpha, use_rslora)
        device = module_device(base_layer)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, device=device)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, device=device)
        self.use_dora = use_dora
        if init == "pissa":
            self._pissa_init()
        else:
            _init_pair(self.lora_A.weight, self.lora_B.weight, init, r)
        if use_dora:
            with torch.no_grad():
                w = dense_weight(base_layer).float()
                self.lora_magnitude_vector = nn.Parameter((w + self.delta_weight()).norm(dim=1))  # (out,)

    @torch.no_grad()
    def _pissa_init(self) -> None:
        """A = sqrt(S_r / s) Vh_r, B = U_r sqrt(S_r / s): s B A is W's best rank-r part, which leaves W."""
        w = float_weight(self.base_layer, "PiSSA init")
        u, sv, vh = torch.linalg.svd(w.float(), full_matrices=False)  # (out, k), (k,), (k, in)
        root = (sv[: self.r] / self.scaling).sqrt()
        self.lora_A.weight.copy_(root[:, None] * vh[: self.r])
        self.lora_B.weight.copy_(u[:, : self.r] * root[None, :])
        w.copy_((w.float() - self.delta_weight()).to(w.dtype))

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        result = self.base_layer(x)
        if self.merged or not self.enabled:
            return result
        x = x.to(self.lora_A.weight.dtype)
        if self.use_dora:
            delta = self._dora_delta(x, result)
        else:
            delta = self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling
        return result + delta.to(result.dtype)

    def _dora_delta(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """m/||W + sBA|| * (W x + s B A x) - W x, written as peft does so the rounding matches."""
        w = dense_weight(self.base_layer).to(x.dtype)
        lora_w = self.lora_B.weight @ self.lora_A.weight
        norm = (w + self.scaling * lora_w.detach()).norm(dim=1).detach()  # (out,), a constant for backprop
        mag = self.lora_magnitude_vector / norm
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            base = result.to(x.dtype)
            if self.base_layer.bias is not None:
                base = base - self.base_layer.bias.to(x.dtype)
        else:  # the base term must see the same dropped-out input as the adapter
            x = self.lora_dropout(x)
            base = F.linear(x, w)
        return (mag - 1) * base + mag * self.lora_B(self.lora_A(x)) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        if not self.use_dora or self.merged:
            return super().merge()
        w = float_weight(self.base_layer, "merge")
        combined = w.float() + self.delta_weight()
        self._merge_norm = combined.norm(dim=1)  # unmerge needs the norm of the *unmerged* weight
        w.copy_(((self.lora_magnitude_vector / self._merge_norm)[:, None] * combined).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.use_dora or not self.merged:
            return super().unmerge()
        w = float_weight(self.base_layer, "merge")
        factor = (self.lora_magnitude_vector / self._merge_norm)[:, None]
        w.copy_((w.float() / factor - self.delta_weight()).to(w.dtype))
        self.merged = False


class LoRAEmbedding(LoRALayer):
    """LoRA around an ``nn.Embedding``: rows of A^T are looked up, then projected by B^T.

    Init is peft's for embeddings (A = 0, B ~ N(0, 1)), which is still the identity at
    the start; there is no dropout (ids cannot be dropped out), DoRA or PiSSA here.
    When the output head shares this weight (tied embeddings), merging changes the head
    too, as it does in peft; keep the adapter unmerged to adapt the input side only.
    """

    def __init__(self, base_layer: nn.Embedding, r: int = 8, alpha: float = 16, use_rslora: bool = False):
        super().__init__(base_layer, r, alpha, use_rslora)
        device = module_device(base_layer)
        self.lora_embedding_A = nn.Parameter(torch.zeros(r, base_layer.num_embeddings, device=device))
        self.lora_embedding_B = nn.Parameter(torch.randn(base_layer.embedding_dim, r, device=device))

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_embedding_B @ self.lora_embedding_A).T  # (num_embeddings, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (...) -> (..., dim)
        result = self.base_layer(ids)
        if self.merged or not self.enabled:
            return result
        after_a = F.embedding(ids, self.lora_embedding_A.T, padding_idx=self.base_layer.padding_idx)  # (..., r)
        return result + (after_a @ self.lora_embedding_B.T * self.scaling).to(result.dtype)


class LoRAConv2d(LoRALayer):
    """LoRA around an ``nn.Conv2d``: A is a conv with the base's kernel/stride/padding into r channels,
    B a 1x1 conv back to the output channels (peft's layout). Groups must be 1."""

    def __init__(self, base_layer: nn.Conv2d, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                 use_rslora: bool = False, init: str = "default"):
        super().__init__(base_layer, r, alpha, use_rslora)
        if base_layer.groups != 1 or base_layer.padding_mode != "zeros":
            raise ValueError("LoRAConv2d supports groups=1 and padding_mode='zeros' only")
        device = module_device(base_layer)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Conv2d(base_layer.in_channels, r, base_layer.kernel_size, base_layer.stride,
                                base_layer.padding, base_layer.dilation, bias=False, device=device)
        self.lora_B = nn.Conv2d(r, base_layer.out_channels, 1, bias=False, device=device)
        _init_pair(self.lora_A.weight, self.lora_B.weight, init, r)

    def delta_weight(self) -> torch.Tensor:
        # B (out, r, 1, 1) composed with A (r, in, kh, kw) is one conv with weight (out, in, kh, kw)
        return self.scaling * torch.einsum("or,rihw->oihw", self.lora_B.weight[:, :, 0, 0], self.lora_A.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H', W')
        result = self.base_layer(x)
        if self.merged or not self.enabled:
            return result
        x = x.to(self.lora_A.weight.dtype)
        return result + (self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling).to(result.dtype)
