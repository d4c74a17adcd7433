"""Translation between Hugging Face ``config.json`` and :class:`ModelConfig`.

Supported ``model_type``: llama, mistral, qwen2, qwen3, mixtral, deepseek_v2,
deepseek_v3. Both the transformers v5 ``rope_parameters`` and the older
``rope_theta`` + ``rope_scaling`` spellings are read; both are written.
Configs HF cannot express (LayerNorm, post-norm, learned positions, ...) are
saved with ``model_type: "llmkit"``; every saved config also carries the exact
``llmkit_config`` so our own round trip is lossless.
"""
from __future__ import annotations

from typing import Any

from llmkit.config import ConfigError, ModelConfig
from llmkit.io.errors import CheckpointError

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "deepseek_v2", "deepseek_v3")
_ACT_FROM_HF = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh", "relu": "relu", "tanh": "tanh"}
_ACT_TO_HF = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "tanh": "tanh"}
_ROPE_FROM_HF = {"default": "none", "linear": "linear", "dynamic": "dynamic", "yarn": "yarn", "llama3": "llama3"}
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM", "mixtral": "MixtralForCausalLM",
                  "deepseek_v2": "DeepseekV2ForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM"}


def config_from_hf(d: dict[str, Any]) -> ModelConfig:
    """Build a validated ModelConfig from an HF config dict; CheckpointError if unsupported."""
    if "llmkit_config" in d:
        return _validated(lambda: ModelConfig.from_dict(d["llmkit_config"]))
    mt = d.get("model_type")
    if mt not in SUPPORTED:
        raise CheckpointError(f"unsupported model_type {mt!r} in config.json; supported: {', '.join(SUPPORTED)}")
    act = d.get("hidden_act", "silu")
    if act not in _ACT_FROM_HF:
        raise CheckpointError(f"config.json hidden_act={act!r} is not supported; expected one of {sorted(_ACT_FROM_HF)}")
    bias = bool(d.get("attention_bias", False))
    kw: dict[str, Any] = dict(
        vocab_size=d["vocab_size"], dim=d["hidden_size"], n_layers=d["num_hidden_layers"],
        n_heads=d["num_attention_heads"], n_kv_heads=d.get("num_key_value_heads"),
        head_dim=d.get("head_dim"), ffn_dim=d["intermediate_size"],
        max_seq_len=d.get("max_position_embeddings", 2048), norm_eps=d.get("rms_norm_eps", 1e-6),
        activation=_ACT_FROM_HF[act], mlp_bias=bool(d.get("mlp_bias", False)),
        qkv_bias=bias, o_bias=bias, attn_dropout=float(d.get("attention_dropout", 0.0) or 0.0),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)), init_std=d.get("initializer_range", 0.02),
        bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"), pad_token_id=d.get("pad_token_id"),
    )
    kw.update(_rope_from_hf(d))
    if mt == "mistral" or mt == "mixtral":
        kw["sliding_window"] = d.get("sliding_window")
    if mt in ("qwen2", "qwen3") and d.get("use_sliding_window"):
        raise CheckpointError(f"{mt} with use_sliding_window=true (per-layer windows) is not supported")
    if mt == "qwen2":
        kw.update(qkv_bias=True, o_bias=False)
    if mt == "qwen3":
        kw["qk_norm"] = True
    if mt == "mixtral":
        kw.update(n_experts=d["num_local_experts"], n_experts_per_tok=d["num_experts_per_tok"],
                  router_aux_loss_coef=d.get("router_aux_loss_coef", 0.01), norm_topk_prob=True)
    if mt in ("deepseek_v2", "deepseek_v3"):
        v3 = mt == "deepseek_v3"
        kw.update(attention="mla", head_dim=None, n_kv_heads=None, q_lora_rank=d.get("q_lora_rank"),
                  kv_lora_rank=d["kv_lora_rank"], qk_nope_head_dim=d["qk_nope_head_dim"],
                  qk_rope_head_dim=d["qk_rope_head_dim"], v_head_dim=d["v_head_dim"],
                  rope_layout="interleaved" if (not v3 or d.get("rope_interleave", True)) else "half",
                  n_experts=d.get("n_routed_experts") or 0, n_experts_per_tok=d.get("num_experts_per_tok") or 1,
                  n_shared_experts=d.get("n_shared_experts") or 0, moe_ffn_dim=d.get("moe_intermediate_size"),
                  first_dense_layers=d.get("first_k_dense_replace", 0), n_group=d.get("n_group") or 1,
                  topk_group=d.get("topk_group") or 1, routed_scaling_factor=d.get("routed_scaling_factor", 1.0),
                  router_aux_loss_coef=d.get("aux_loss_alpha", 0.001),
                  router_score="sigmoid" if v3 else "softmax",
                  topk_method="noaux_tc" if v3 else d.get("topk_method", "greedy"),
                  # transformers' DeepSeek-V2 never renormalises the top-k weights, whatever the flag says
                  norm_topk_prob=bool(d.get("norm_topk_prob", True)) if v3 else False)
    return _validated(lambda: ModelConfig(**kw))


def _validated(build) -> ModelConfig:
    try:
        return build().validate()
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"config.json does not give a valid model config: {e}") from e


def _rope_from_hf(d: dict[str, Any]) -> dict[str, Any]:
    params = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
    rtype = params.get("rope_type", params.get("type", "default"))
    if rtype not in _ROPE_FROM_HF:
        raise CheckpointError(f"rope type {rtype!r} is not supported; expected one of {sorted(_ROPE_FROM_HF)}")
    out: dict[str, Any] = dict(rope_theta=float(theta), rope_scaling=_ROPE_FROM_HF[rtype],
                               rotary_fraction=float(params.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))))
    if rtype == "default":
        return out
    max_pos = d.get("max_position_embeddings", 2048)
    orig = params.get("original_max_position_embeddings") or max_pos
    if rtype == "dynamic":
        orig = max_pos  # transformers grows dynamic NTK from max_position_embeddings
    factor = params.get("factor")
    if factor is None:
        factor = max_pos / orig
    out.update(rope_factor=float(factor), rope_original_max_seq_len=int(orig))
    if rtype == "llama3":
        out.update(rope_low_freq_factor=float(params.get("low_freq_factor", 1.0)),
                   rope_high_freq_factor=float(params.get("high_freq_factor", 4.0)))
    if rtype == "yarn":
        out.update(rope_beta_fast=float(params.get("beta_fast") or 32.0), rope_beta_slow=float(params.get("beta_slow") or 1.0),
                   rope_attention_factor=params.get("attention_factor"), rope_mscale=params.get("mscale"),
                   rope_mscale_all_dim=params.get("mscale_all_dim"))
    return out


def hf_model_type(cfg: ModelConfig) -> str | None:
    """The HF model_type that reproduces ``cfg`` exactly, or None if transformers has no equivalent."""
    plain = (cfg.norm == "rmsnorm" and cfg.norm_placement == "pre" and not cfg.deepnorm and cfg.gated_mlp
             and cfg.activation in _ACT_TO_HF and cfg.pos_embedding == "rope" and cfg.rotary_fraction == 1.0
             and cfg.rope_scaling in ("none", "linear", "dynamic", "yarn", "llama3") and cfg.resid_dropout == 0.0)
    if not plain:
        return None
    if cfg.attention == "mla":
        if cfg.router_score == "sigmoid" or cfg.topk_method == "noaux_tc":
            return "deepseek_v3"
        ok = cfg.rope_layout == "interleaved" and not cfg.norm_topk_prob and cfg.router_score == "softmax"
        return "deepseek_v2" if ok else None
    if cfg.rope_layout != "half":
        return None
    if cfg.n_experts:
        simple = (cfg.n_shared_experts == 0 and cfg.first_dense_layers == 0 and cfg.router_score == "softmax"
                  and cfg.topk_method == "greedy" and cfg.norm_topk_prob and cfg.routed_scaling_factor == 1.0)
        return "mixtral" if simple and not cfg.qkv_bias and not cfg.qk_norm else None
    if cfg.qk_norm:
        return "qwen3" if cfg.qkv_bias == cfg.o_bias and cfg.sliding_window is None else None
    if cfg.qkv_bias and not cfg.o_bias:
        return "qwen2" if cfg.sliding_window is None else None
    if cfg.qkv_bias != cfg.o_bias:
        return None
    return "mistral" if cfg.sliding_window is not None else "llama"


def config_to_hf(cfg: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """An HF config dict for ``cfg`` (``model_type: "llmkit"`` when HF has no equivalent)."""
    mt = hf_model_type(cfg)
    d: dict[str, Any] = {"model_type": mt or "llmkit", "llmkit_config": cfg.to_dict(), "dtype": dtype}
    if mt is None:
        return d
    d.update(architectures=[_ARCHITECTURES[mt]], vocab_size=cfg.vocab_size, hidden_size=cfg.dim,
             num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
             intermediate_size=cfg.ffn_dim, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
             hidden_act=_ACT_TO_HF[cfg.activation], tie_word_embeddings=cfg.tie_word_embeddings,
             attention_bias=cfg.o_bias if mt != "qwen2" else False, attention_dropout=cfg.attn_dropout,
             mlp_bias=cfg.mlp_bias, initializer_range=cfg.init_std, bos_token_id=cfg.bos_token_id,
             eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
    if cfg.attention != "mla":
        d["head_dim"] = cfg.head_size
    rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": {"none": "default"}.get(cfg.rope_scaling, cfg.rope_scaling)}
    if cfg.rope_scaling != "none":
        rope["factor"] = cfg.rope_factor
    if cfg.rope_scaling in ("llama3", "yarn"):
        rope["original_max_position_embeddings"] = cfg.original_max_seq_len
    if cfg.rope_scaling == "llama3":
        rope.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor)
    if cfg.rope_scaling == "yarn":
        rope.update(beta_fast=cfg.rope_beta_fast, beta_slow=cfg.rope_beta_slow)
        for key, value in (("attention_factor", cfg.rope_attention_factor), ("mscale", cfg.rope_mscale),
                           ("mscale_all_dim", cfg.rope_mscale_all_dim)):
            if value is not None:
                rope[key] = value
    d["rope_parameters"] = rope
    d["rope_theta"] = cfg.rope_theta
    if cfg.rope_scaling != "none":
        d["rope_scaling"] = dict(rope)
    if mt in ("mistral", "mixtral"):
        d["sliding_window"] = cfg.sliding_window
    if mt == "mixtral":
        d.update(num_local_experts=cfg.n_experts, num_experts_per_tok=cfg.n_experts_per_tok,
                 router_aux_loss_coef=cfg.router_aux_loss_coef)
    if mt in ("deepseek_v2", "deepseek_v3"):
        d.update(attention_bias=cfg.qkv_bias, q_lora_rank=cfg.q_lora_rank, kv_lora_rank=cfg.kv_lora_rank,
                 qk_nope_head_dim=cfg.qk_nope_head_dim, qk_rope_head_dim=cfg.qk_rope_head_dim,
                 v_head_dim=cfg.v_head_dim, n_routed_experts=cfg.n_experts, num_experts_per_tok=cfg.n_experts_per_tok,
                 n_shared_experts=cfg.n_shared_experts, moe_intermediate_size=cfg.expert_dim,
                 first_k_dense_replace=cfg.first_dense_layers if cfg.n_experts else cfg.n_layers,
                 n_group=cfg.n_group, topk_group=cfg.topk_group, routed_scaling_factor=cfg.routed_scaling_factor,
                 norm_topk_prob=cfg.norm_topk_prob, topk_method=cfg.topk_method,
                 rope_interleave=cfg.rope_layout == "interleaved")
    return d
