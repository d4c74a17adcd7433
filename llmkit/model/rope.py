"""Positional encodings: rotary (RoPE) with its context-extension scalings, and sinusoidal.

RoPE (Su et al. 2021) rotates each pair of query/key dims by ``pos * inv_freq[i]``,
so the score q_m . k_n depends only on m - n. Context extension changes
``inv_freq`` (and optionally scales cos/sin, "attention temperature"):

- ``linear``: position interpolation, inv_freq / s (Chen et al. 2023).
- ``ntk``: NTK-aware base change, base * s^(d/(d-2)) (bloc97, 2023).
- ``dynamic``: the NTK base change with s grown from the current length
  L > L0: base * (s L / L0 - (s - 1))^(d/(d-2)) (as in HF's "dynamic").
- ``ntk_by_parts``: per-frequency blend between interpolation and extrapolation
  by wavelength, ramp between beta_slow and beta_fast rotations (YaRN paper, sec. 3.2).
- ``yarn``: ntk_by_parts plus the temperature sqrt(1/t) = 0.1 ln s + 1 on cos/sin
  (Peng et al. 2023); DeepSeek's mscale/mscale_all_dim variant included.
- ``llama3``: Meta's piecewise rule: long wavelengths / s, short unchanged, a
  smooth blend between (Llama 3.1).

Each function returns ``(inv_freq[rotary_dim // 2], attention_factor)``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from llmkit.config import ModelConfig, yarn_mscale
from llmkit.model import fused


def _base_inv_freq(theta: float | torch.Tensor, d: int) -> torch.Tensor:
    exponents = torch.arange(0, d, 2, dtype=torch.float32) / d
    return 1.0 / (theta ** exponents)


def _default(cfg: ModelConfig, d: int) -> tuple[torch.Tensor, float]:
    return _base_inv_freq(cfg.rope_theta, d), 1.0


def _linear(cfg: ModelConfig, d: int) -> tuple[torch.Tensor, float]:
    return _base_inv_freq(cfg.rope_theta, d) / cfg.rope_factor, 1.0


def _ntk(cfg: ModelConfig, d: int) -> tuple[torch.Tensor, float]:
    return _base_inv_freq(cfg.rope_theta * cfg.rope_factor ** (d / (d - 2)), d), 1.0


def _dynamic(cfg: ModelConfig, d: int) -> tuple[torch.Tensor, float]:
    # Below the original context dynamic NTK is plain RoPE; growth happens in dynamic_inv_freq().
    return _base_inv_freq(cfg.rope_theta, d), 1.0


def dynamic_inv_freq(cfg: ModelConfig, d: int, seq_len: torch.Tensor) -> torch.Tensor:
    """Dynamic-NTK inv_freq for the current length (a 0-d tensor, so it traces under torch.compile)."""
    orig = cfg.original_max_seq_len
    length = torch.clamp(seq_len.float(), min=orig)
    base = cfg.rope_theta * ((cfg.rope_factor * length / orig) - (cfg.rope_factor - 1)) ** (d / (d - 2))
    exponents = torch.arange(0, d, 2, dtype=torch.float32, device=seq_len.device) / d
    return 1.0 / (base ** exponents)


def _ntk_by_parts_freq(cfg: ModelConfig, d: int) -> torch.Tensor:
    s, theta, orig = cfg.rope_factor, cfg.rope_theta, cfg.original_max_seq_len

    def dim_for_rotations(rotations: float) -> float:
        # the dim index whose wavelength fits `rotations` times into the original context
        return d * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(dim_for_rotations(cfg.rope_beta_fast)), 0)
    high = min(math.ceil(dim_for_rotations(cfg.rope_beta_slow)), d - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation = _base_inv_freq(theta, d)
    interpolation = extrapolation / s
    keep = 1 - ramp  # 1 = high frequency: keep as trained; 0 = low frequency: interpolate
    return interpolation * (1 - keep) + extrapolation * keep


def _ntk_by_parts(cfg: ModelConfig, d: int) -> tuple[torch.Tensor, float]:
    return _ntk_by_parts_freq(cfg, d), 1.0


def _yarn(cfg: ModelConfig, d: int) -> tuple[torch.Tensor, float]:
    factor = cfg.rope_attention_factor
    if factor is None:
        if cfg.rope_mscale and cfg.rope_mscale_all_dim:
            factor = yarn_mscale(cfg.rope_factor, cfg.rope_mscale) / yarn_mscale(cfg.rope_factor, cfg.rope_mscale_all_dim)
        else:
            factor = yarn_mscale(cfg.rope_factor)
    return _ntk_by_parts_freq(cfg, d), factor


def _llama3(cfg: ModelConfig, d: int) -> tuple[torch.Tensor, float]:
    inv = _base_inv_freq(cfg.rope_theta, d)
    s, orig = cfg.rope_factor, cfg.original_max_seq_len
    low_wavelen = orig / cfg.rope_low_freq_factor
    high_wavelen = orig / cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / s, inv)
    smooth = (orig / wavelen - cfg.rope_low_freq_factor) / (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
    blended = (1 - smooth) * scaled / s + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled), 1.0


ROPE_SCALINGS = {
    "none": _default,
    "linear": _linear,
    "ntk": _ntk,
    "dynamic": _dynamic,
    "ntk_by_parts": _ntk_by_parts,
    "yarn": _yarn,
    "llama3": _llama3,
}


def rope_inv_freq(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """inv_freq[rotary_dim // 2] and the cos/sin scale for ``cfg.rope_scaling``."""
    return ROPE_SCALINGS[cfg.rope_scaling](cfg, cfg.rotary_dim)


class RotaryEmbedding(nn.Module):
    """Turns positions into (cos, sin), each (B, T, rotary_dim), laid out for ``cfg.rope_layout``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        inv_freq, self.attention_factor = rope_inv_freq(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq
        if self.cfg.rope_scaling == "dynamic":
            inv_freq = dynamic_inv_freq(self.cfg, self.cfg.rotary_dim, positions.max() + 1)
        freqs = positions[..., None].float() * inv_freq  # (B, T, rotary_dim // 2)
        if self.cfg.rope_layout == "half":
            freqs = torch.cat([freqs, freqs], dim=-1)
        else:
            freqs = freqs.repeat_interleave(2, dim=-1)
        return freqs.cos() * self.attention_factor, freqs.sin() * self.attention_factor


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str = "half") -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of x (B, H, T, D) by the angles in cos/sin (B, T, R)."""
    if (x.dim() == 4 and x.stride(-1) == 1 and cos.shape == sin.shape == (x.shape[0], x.shape[2], cos.shape[-1])
            and cos.dtype == sin.dtype == torch.float32 and cos.is_contiguous() and sin.is_contiguous()
            and fused.applies(x)):  # one fused pass at inference on the CPU
        return fused.rope(x, cos, sin, layout != "half")
    r = cos.shape[-1]
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # broadcast over heads
    rot, rest = x[..., :r], x[..., r:]
    if layout == "half":
        x1, x2 = rot.chunk(2, dim=-1)
        partner = torch.cat([-x2, x1], dim=-1)
    else:
        pairs = rot.unflatten(-1, (-1, 2))
        partner = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    out = rot * cos + partner * sin
    return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out


def sinusoidal_embedding(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Vaswani et al. absolute encodings: (B, T) positions -> (B, T, dim), sin on even, cos on odd dims."""
    inv = _base_inv_freq(base, dim if dim % 2 == 0 else dim + 1).to(positions.device)
    angles = positions[..., None].float() * inv
    out = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)
    return out[..., :dim]
