"""Translation between GGUF metadata (llama.cpp's key names) and :class:`ModelConfig`.

A GGUF file has no ``config.json``: its ``{arch}.*`` keys are the config.
Supported architectures are the dense LLaMA family as llama.cpp names them:
``llama`` (Llama 1-3, Mistral, SmolLM, ...), ``qwen2`` and ``qwen3``. Which
optional parts a model has (q/k/v/o and MLP biases, QK-norm, an untied
output matrix) is read off the tensors that exist, as llama.cpp does.

RoPE scaling has three encodings. Linear and YaRN are keys
(``{arch}.rope.scaling.*``). llama.cpp multiplies YaRN's cos/sin by
``attn_factor * (0.1 ln s + 1)``, so its ``attn_factor`` is ours divided by
that default. Llama-3 scaling is not a key but a tensor, ``rope_freqs.weight``:
the per-frequency divisor of ``inv_freq``. We recover the llama3 parameters
from it (taking ``low_freq_factor = 1``, as every published Llama 3.x does)
and accept the fit only if it reproduces the tensor; export writes the tensor
from the config the same way.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from llmkit.config import ConfigError, ModelConfig, yarn_mscale
from llmkit.io.errors import CheckpointError
from llmkit.io.hf_config import hf_model_type
from llmkit.model.rope import rope_inv_freq

ARCHS = ("llama", "qwen2", "qwen3")
ROPE_FREQS = "rope_freqs.weight"
_MISSING = object()


def config_from_gguf(meta: dict[str, Any], shapes: dict[str, tuple[int, ...]], rope_freqs: np.ndarray | None,
                     source: str) -> ModelConfig:
    """Build a validated ModelConfig from GGUF metadata.

    Args:
        meta: metadata key -> value (scalars; small arrays as lists).
        shapes: tensor name -> shape in torch order.
        rope_freqs: the ``rope_freqs.weight`` tensor (rotary_dim // 2,), if the file has one.
        source: the file, named in every error.

    Raises:
        CheckpointError: unsupported architecture or feature, missing or malformed key.
    """
    arch = meta.get("general.architecture")
    if arch not in ARCHS:
        raise CheckpointError(f"{source}: GGUF architecture {arch!r} is not supported; supported: {', '.join(ARCHS)}")

    def key(name: str, default: Any = _MISSING) -> Any:
        full = f"{arch}.{name}"
        if full not in meta:
            if default is _MISSING:
                raise CheckpointError(f"{source}: GGUF metadata key {full} is missing")
            return default
        if isinstance(meta[full], list):
            raise CheckpointError(f"{source}: {full} varies per layer, which llmkit does not support")
        return meta[full]

    if key("expert_count", 0):
        raise CheckpointError(f"{source}: mixture-of-experts GGUF files ({arch}.expert_count) are not supported")
    if "token_embd.weight" not in shapes:
        raise CheckpointError(f"{source} has no token_embd.weight tensor")
    dim, n_heads = key("embedding_length"), key("attention.head_count")
    head_dim, kv_heads = key("attention.key_length", dim // n_heads), key("attention.head_count_kv", n_heads)
    if key("attention.value_length", head_dim) != head_dim:
        raise CheckpointError(f"{source}: key_length {head_dim} != value_length {key('attention.value_length')}")
    eos = meta.get("tokenizer.ggml.eos_token_id")
    kw: dict[str, Any] = dict(
        vocab_size=shapes["token_embd.weight"][0], dim=dim, n_layers=key("block_count"), n_heads=n_heads,
        n_kv_heads=None if kv_heads == n_heads else kv_heads, head_dim=None if head_dim * n_heads == dim else head_dim,
        ffn_dim=key("feed_forward_length"), max_seq_len=key("context_length"),
        norm_eps=_f32(key("attention.layer_norm_rms_epsilon")), rope_theta=_f32(key("rope.freq_base", 10000.0)),
        rotary_fraction=key("rope.dimension_count", head_dim) / head_dim,
        tie_word_embeddings="output.weight" not in shapes,
        qkv_bias="blk.0.attn_q.bias" in shapes, o_bias="blk.0.attn_output.bias" in shapes,
        mlp_bias="blk.0.ffn_up.bias" in shapes, qk_norm="blk.0.attn_q_norm.weight" in shapes,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_id=eos,
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
    )
    scaling = key("rope.scaling.type", "none")
    if scaling == "linear":
        kw.update(rope_scaling="linear", rope_factor=_f32(key("rope.scaling.factor")))
    elif scaling == "yarn":
        factor = _f32(key("rope.scaling.factor"))
        attn = _f32(key("rope.scaling.attn_factor", 1.0))
        kw.update(rope_scaling="yarn", rope_factor=factor,
                  rope_original_max_seq_len=key("rope.scaling.original_context_length"),
                  rope_beta_fast=_f32(key("rope.scaling.yarn_beta_fast", 32.0)),
                  rope_beta_slow=_f32(key("rope.scaling.yarn_beta_slow", 1.0)),
                  rope_attention_factor=None if attn == 1.0 else _f32(attn * yarn_mscale(factor)))
    elif scaling != "none":
        raise CheckpointError(f"{source}: rope scaling {scaling!r} is not supported (none, linear, yarn, llama3)")
    cfg = _validated(kw, source)
    if rope_freqs is None:
        return cfg
    if scaling != "none":
        raise CheckpointError(f"{source} has both {arch}.rope.scaling.type={scaling!r} and {ROPE_FREQS}")
    return _llama3_from_freqs(cfg, rope_freqs, source)


def _f32(x: float) -> float:
    """The short decimal a float32 metadata value was written from (9.99999975e-06 -> 1e-05)."""
    return float(f"{x:.7g}")


def _validated(kw: dict[str, Any], source: str) -> ModelConfig:
    try:
        return ModelConfig(**kw).validate()
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{source}: the GGUF metadata does not give a valid model config: {e}") from e


def _llama3_from_freqs(cfg: ModelConfig, freqs: np.ndarray, source: str) -> ModelConfig:
    """Fit llama3 scaling to llama.cpp's per-frequency divisors and check the fit reproduces them."""
    freqs = np.asarray(freqs, dtype=np.float64).reshape(-1)
    base = rope_inv_freq(cfg)[0].double().numpy()  # (rotary_dim // 2,)
    if freqs.shape != base.shape:
        raise CheckpointError(f"{source}: {ROPE_FREQS} has {freqs.size} entries, expected {base.size}")
    if np.allclose(freqs, 1.0):
        return cfg
    factor = float(freqs.max())
    blend = (freqs > 1 + 1e-6) & (freqs < factor * (1 - 1e-6))
    fitted = None
    if blend.sum() >= 2:
        # between the two wavelength limits 1/f = (1 - t)/s + t, with t = (L/wavelen - lf)/(hf - lf) linear in
        # 1/wavelen: fitting t = a/wavelen + b gives, with lf = 1, hf = 1 - 1/b and L = -a/b
        t = (1 / freqs[blend] - 1 / factor) / (1 - 1 / factor)
        a, b = np.polyfit(base[blend] / (2 * np.pi), t, 1)
        if b < 0:
            fitted = cfg.replace(rope_scaling="llama3", rope_factor=round(factor, 4), rope_original_max_seq_len=round(-a / b),
                                 rope_low_freq_factor=1.0, rope_high_freq_factor=round(1 - 1 / b, 4))
            if not np.allclose(base / rope_inv_freq(fitted)[0].double().numpy(), freqs, rtol=1e-4):
                fitted = None
    if fitted is None:
        raise CheckpointError(f"{source}: {ROPE_FREQS} is not a llama3 rope scaling llmkit can reproduce")
    return fitted


def gguf_arch(cfg: ModelConfig) -> str:
    """The llama.cpp architecture that reproduces ``cfg``; CheckpointError if there is none."""
    mt = hf_model_type(cfg)
    if mt not in ARCHS or cfg.activation != "silu":
        why = (f"activation {cfg.activation!r}" if cfg.activation != "silu" else
               f"it matches {mt!r}" if mt else "transformers has no equivalent")
        raise CheckpointError("GGUF export supports llama-style configs only (RMSNorm, pre-norm, gated SiLU MLP, "
                              "full half-layout RoPE, dense attention without sliding window, qwen2/qwen3 biases "
                              f"and QK-norm); not this one: {why}")
    if cfg.rope_scaling not in ("none", "linear", "yarn", "llama3") or cfg.rope_mscale is not None:
        raise CheckpointError(f"GGUF has no encoding for rope_scaling={cfg.rope_scaling!r}"
                              + (" with rope_mscale" if cfg.rope_mscale is not None else ""))
    return mt


def gguf_metadata(cfg: ModelConfig, arch: str) -> dict[str, Any]:
    """The ``{arch}.*`` and token-id keys llama.cpp writes for ``cfg`` (ints are uint32, floats float32)."""
    meta: dict[str, Any] = {
        "vocab_size": cfg.vocab_size, "context_length": cfg.max_seq_len, "embedding_length": cfg.dim,
        "block_count": cfg.n_layers, "feed_forward_length": cfg.ffn_dim, "attention.head_count": cfg.n_heads,
        "attention.head_count_kv": cfg.kv_heads, "attention.key_length": cfg.head_size,
        "attention.value_length": cfg.head_size, "attention.layer_norm_rms_epsilon": cfg.norm_eps,
        "rope.freq_base": cfg.rope_theta, "rope.dimension_count": cfg.rotary_dim,
    }
    if cfg.rope_scaling == "linear":
        meta.update({"rope.scaling.type": "linear", "rope.scaling.factor": cfg.rope_factor})
    if cfg.rope_scaling == "yarn":
        meta.update({"rope.scaling.type": "yarn", "rope.scaling.factor": cfg.rope_factor,
                     "rope.scaling.original_context_length": cfg.original_max_seq_len,
                     "rope.scaling.yarn_beta_fast": cfg.rope_beta_fast, "rope.scaling.yarn_beta_slow": cfg.rope_beta_slow})
        if cfg.rope_attention_factor is not None:
            meta["rope.scaling.attn_factor"] = cfg.rope_attention_factor / yarn_mscale(cfg.rope_factor)
    out = {f"{arch}.{k}": float(v) if isinstance(v, float) else v for k, v in meta.items()}
    eos = cfg.eos_token_id[0] if isinstance(cfg.eos_token_id, list) else cfg.eos_token_id
    for name, value in (("bos", cfg.bos_token_id), ("eos", eos), ("padding", cfg.pad_token_id)):
        if value is not None:
            out[f"tokenizer.ggml.{name}_token_id"] = value
    return out


def llama3_rope_freqs(cfg: ModelConfig) -> np.ndarray | None:
    """llama.cpp's ``rope_freqs.weight`` for llama3 scaling: plain inv_freq over the scaled one."""
    if cfg.rope_scaling != "llama3":
        return None
    plain = rope_inv_freq(cfg.replace(rope_scaling="none"))[0]
    return (plain / rope_inv_freq(cfg)[0]).to(torch.float32).numpy()
