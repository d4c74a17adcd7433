"""Parameter counts in closed form: llmkit's one parameter counter.

Total, active per token (MoE), the weights a token multiplies by (for FLOPs),
and the parts that memory plans need. The formulas mirror the modules in
``llmkit/model`` one for one (same linears, norms and biases; the tests check
them against a meta-device build of each), so they cost nothing even for a
671B config, and they can split the count into what QLoRA quantises (the
block linears' weights), what LoRA adapts (attention linears) and what a MoE
token touches (``k`` of ``E`` routed experts).
:func:`llmkit.model.count_parameters` is ``count_params(cfg).total``.
"""
from __future__ import annotations

from dataclasses import dataclass

from llmkit.config import ModelConfig

Linear = tuple[int, int, bool]  # (in_features, out_features, has_bias)


def attention_linears(cfg: ModelConfig) -> dict[str, Linear]:
    """The ``nn.Linear`` layers of one attention module, by checkpoint name."""
    d, h, bias = cfg.dim, cfg.n_heads, cfg.qkv_bias
    if cfg.attention == "mla":
        qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        if cfg.q_lora_rank is None:
            q = {"q_proj": (d, h * qk, False)}
        else:
            q = {"q_a_proj": (d, cfg.q_lora_rank, bias), "q_b_proj": (cfg.q_lora_rank, h * qk, False)}
        return {**q,
                "kv_a_proj_with_mqa": (d, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias),
                "kv_b_proj": (cfg.kv_lora_rank, h * (cfg.qk_nope_head_dim + cfg.v_head_dim), False),
                "o_proj": (h * cfg.v_head_dim, d, cfg.o_bias)}
    q, kv = h * cfg.head_size, cfg.kv_heads * cfg.head_size
    return {"q_proj": (d, q, bias), "k_proj": (d, kv, bias), "v_proj": (d, kv, bias), "o_proj": (q, d, cfg.o_bias)}


def _mlp_linears(cfg: ModelConfig, hidden: int) -> dict[str, Linear]:
    """The linears of one (dense or expert) MLP of width ``hidden``."""
    up = {"up_proj": (cfg.dim, hidden, cfg.mlp_bias), "down_proj": (hidden, cfg.dim, cfg.mlp_bias)}
    return {"gate_proj": (cfg.dim, hidden, cfg.mlp_bias), **up} if cfg.gated_mlp else up


def _linear_weights(linears: dict[str, Linear]) -> int:
    return sum(i * o for i, o, _ in linears.values())


def _linear_params(linears: dict[str, Linear]) -> int:
    return sum(i * o + (o if b else 0) for i, o, b in linears.values())


def _norm_params(cfg: ModelConfig, width: int) -> int:
    """A block norm of ``width``: RMSNorm has a weight, LayerNorm also a bias unless ``norm_bias=False``."""
    return width * (2 if cfg.norm == "layernorm" and cfg.norm_bias else 1)


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of a config (tied weights counted once)."""

    total: int  # every distinct parameter
    active: int  # used by one token: total minus the routed experts it skips
    block_linear_weights: int  # weights of the blocks' nn.Linear layers (what QLoRA stores in 4 bits)
    matmul: int  # weights one token multiplies by: the active 2-D weights bar the embedding lookups, plus the
    #              output head even when tied (the N of MFU accounting, :mod:`llmkit.estimate.flops`)


def count_params(cfg: ModelConfig) -> ParamCounts:
    """Closed-form :class:`ParamCounts` of ``cfg``: what a ``CausalLM(cfg)`` holds, without building it."""
    d = cfg.dim
    total = cfg.vocab_size * d * (1 if cfg.tie_word_embeddings else 2)  # embed_tokens, untied lm_head
    if cfg.pos_embedding == "learned":
        total += cfg.max_seq_len * d
    if cfg.norm_placement != "post":
        total += _norm_params(cfg, d)  # the final norm
    attn = attention_linears(cfg)
    attn_norms = 2 * cfg.head_size if cfg.qk_norm else 0  # RMSNorm over each head's q and k
    if cfg.attention == "mla":
        attn_norms = cfg.kv_lora_rank + (cfg.q_lora_rank or 0)
    block_norms = (4 if cfg.norm_placement == "sandwich" else 2) * _norm_params(cfg, d)
    dense, expert = _mlp_linears(cfg, cfg.ffn_dim), _mlp_linears(cfg, cfg.expert_dim)
    shared = _mlp_linears(cfg, cfg.expert_dim * cfg.n_shared_experts) if cfg.n_shared_experts else {}
    skipped, linear, matmul = 0, 0, cfg.vocab_size * d  # matmul starts with the output head
    for layer in range(cfg.n_layers):
        total += block_norms + attn_norms + _linear_params(attn)
        linear += _linear_weights(attn)
        matmul += _linear_weights(attn)
        if cfg.is_moe_layer(layer):
            total += cfg.n_experts * (d + _linear_params(expert)) + _linear_params(shared)  # router row + expert
            linear += cfg.n_experts * _linear_weights(expert) + _linear_weights(shared)
            skipped += (cfg.n_experts - cfg.n_experts_per_tok) * _linear_params(expert)
            matmul += cfg.n_experts * d + cfg.n_experts_per_tok * _linear_weights(expert) + _linear_weights(shared)
        else:
            total += _linear_params(dense)
            linear += _linear_weights(dense)
            matmul += _linear_weights(dense)
    return ParamCounts(total=total, active=total - skipped, block_linear_weights=linear, matmul=matmul)


def lora_params(cfg: ModelConfig, rank: int) -> int:
    """Trainable LoRA parameters with rank-``rank`` adapters A (r x in), B (out x r) on every attention linear."""
    return cfg.n_layers * rank * sum(i + o for i, o, _ in attention_linears(cfg).values())
