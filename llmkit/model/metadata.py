"""`AttentionMetadata`: the per-forward inputs every attention layer shares, passed as an argument.

``CausalLM.forward`` computes these once (cache slots, RoPE angles, the mask)
and hands the same object to every block, which hands it to its attention.
Nothing here is global, so two models (or two engines) can run side by side,
and an inference engine can add its own fields (block tables, sequence
lengths) without touching the block code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Inputs of attention for one forward over T tokens.

    Attributes:
        input_pos: (T,) cache slots the tokens are written to; None = no cache (attend over this call's keys).
        rope: (cos, sin), each (B, T, rotary_dim), the RoPE angles of the tokens' positions; None without RoPE.
        mask: bool (B or 1, 1, T, S), True = may attend; None = plain causal over T == S keys (the fused path).
            With ``prefix_kv`` the mask covers its n columns first, then the S keys.
        prefix_kv: (n_layers, 2, Hkv, n, D) virtual keys and values each layer attends to before the
            tokens' own (prefix tuning); None = none.
    """

    input_pos: torch.Tensor | None = None
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    mask: torch.Tensor | None = None
    prefix_kv: torch.Tensor | None = None
