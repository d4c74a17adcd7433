"""Closed-form counts: parameters (vs the built model), FLOPs (vs torch's counter), compute and Chinchilla, KV cache."""
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llmkit import CausalLM, ModelConfig
from llmkit.estimate import estimate
from llmkit.estimate.compute import compute_optimal, train_flops, train_gpu_hours
from llmkit.estimate.flops import train_flops_per_token
from llmkit.estimate.memory import NF4_BYTES_PER_WEIGHT, kv_cache_bytes_per_token
from llmkit.estimate.params import count_params, lora_params
from llmkit.model import count_parameters
from llmkit.presets import PRESETS, PUBLISHED_PARAMS

SMALL = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, ffn_dim=96, max_seq_len=64)
MLA = dict(attention="mla", kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12,
           rope_layout="interleaved")
VARIANTS = {
    "gqa-qk-norm-biases": dict(n_kv_heads=2, qk_norm=True, qkv_bias=True, o_bias=True),
    "head-dim": dict(head_dim=24, n_kv_heads=2),
    "mla": MLA,
    "mla-q-lora": dict(MLA, q_lora_rank=24, qkv_bias=True),
    "moe-shared": dict(n_experts=4, n_experts_per_tok=2, n_shared_experts=1, moe_ffn_dim=32, first_dense_layers=1),
    "learned-pos-tied": dict(pos_embedding="learned", tie_word_embeddings=True),
    "post-layernorm": dict(norm_placement="post", deepnorm=True, norm="layernorm"),
    "sandwich-no-bias": dict(norm_placement="sandwich", norm="layernorm", norm_bias=False),
    "gelu-mlp-bias": dict(gated_mlp=False, mlp_bias=True, activation="gelu"),
}


def _built(cfg: ModelConfig) -> CausalLM:
    with torch.device("meta"):
        return CausalLM(cfg)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_param_count_matches_the_built_model(name):
    cfg = ModelConfig(**SMALL, **VARIANTS[name])
    assert count_params(cfg).total == _built(cfg).num_parameters() == count_parameters(cfg)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_every_published_preset_builds_with_its_published_count(name):
    assert _built(PRESETS[name]).num_parameters() == count_params(PRESETS[name]).total == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_matmul_weights_are_the_built_models_2d_weights(name):
    """Every 2-D weight bar the embeddings, routed experts k of E times, plus the output head even when tied."""
    cfg = ModelConfig(**SMALL, **VARIANTS[name])
    dense, routed = cfg.vocab_size * cfg.dim, 0
    for pname, p in _built(cfg).named_parameters():
        if p.dim() == 2 and "embed" not in pname and pname != "lm_head.weight":
            if ".mlp.experts." in pname:
                routed += p.numel()
            else:
                dense += p.numel()
    assert count_params(cfg).matmul == dense + routed * cfg.n_experts_per_tok // max(cfg.n_experts, 1)


@pytest.mark.parametrize("name", ["head-dim", "mla", "moe-shared", "learned-pos-tied"])
def test_train_flops_per_token_match_torchs_flop_counter(name):
    """Eager attention computes the whole score matrix; the formula counts the causal half, so add the other."""
    cfg = ModelConfig(**SMALL, **VARIANTS[name], attn_impl="eager")
    b, t = 2, 16
    torch.manual_seed(0)
    model = CausalLM(cfg)
    with FlopCounterMode(display=False) as counter:
        model(torch.randint(0, cfg.vocab_size, (b, t))).sum().backward()
    qk, v = (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim) if cfg.attention == "mla" else (
        cfg.head_size, cfg.head_size)
    upper_half = 3 * cfg.n_layers * b * t * t * cfg.n_heads * (qk + v)
    assert counter.get_total_flops() == b * t * train_flops_per_token(cfg, t) + upper_half


def test_active_params_count_k_of_e_experts():
    assert count_params(PRESETS["llama-3-8b"]).active == count_params(PRESETS["llama-3-8b"]).total
    mixtral = count_params(PRESETS["mixtral-8x7b"])
    assert abs(mixtral.active / 12.9e9 - 1) < 0.01  # Mistral's "12.9B active parameters"
    expert = 3 * 4096 * 14336
    assert mixtral.total - mixtral.active == 32 * (8 - 2) * expert


def test_block_linear_weights_are_what_a_model_holds_in_block_linears():
    cfg = ModelConfig(**SMALL, **VARIANTS["moe-shared"])
    with torch.device("meta"):
        model = CausalLM(cfg)
    weights = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    assert count_params(cfg).block_linear_weights == weights


def test_lora_params_cover_every_attention_linear():
    cfg = PRESETS["llama-3-8b"]  # q, o: 4096 -> 4096; k, v: 4096 -> 1024
    assert lora_params(cfg, 8) == 32 * 8 * (2 * (4096 + 4096) + 2 * (4096 + 1024))


def test_chinchilla_and_compute_formulas():
    e = estimate(PRESETS["tiny"])
    assert e.chinchilla_tokens == 20 * e.params == e.tokens
    assert e.train_flops == 6 * e.params * e.tokens
    assert e.train_gpu_hours == pytest.approx(e.train_flops / (0.4 * 989e12) / 3600)
    moe = estimate(PRESETS["mixtral-8x7b"], tokens=10**12)
    assert moe.train_flops == train_flops(moe.active_params, 10**12)  # FLOPs follow the active parameters
    n, d = compute_optimal(1e23)
    assert d == pytest.approx(20 * n, rel=1e-9) and train_flops(n, d) == pytest.approx(1e23, rel=1e-6)
    assert train_gpu_hours(989e12 * 3600, mfu=1.0) == pytest.approx(1.0)


def test_kv_cache_bytes_per_token_llama3_8b():
    assert kv_cache_bytes_per_token(PRESETS["llama-3-8b"]) == 131072 == 2 * 32 * 8 * 128 * 2
    assert kv_cache_bytes_per_token(PRESETS["deepseek-v2-lite"]) == 27 * (512 + 64) * 2


@pytest.mark.parametrize("variant", [dict(n_kv_heads=2), MLA])
def test_kv_cache_bytes_per_token_match_the_allocated_cache(variant):
    cfg = ModelConfig(**SMALL, **variant)
    with torch.device("meta"):
        model = CausalLM(cfg)
    model.setup_caches(3, 40, dtype=torch.bfloat16, device="meta")
    cached = sum(b.numel() * b.element_size() for layer in model.model.layers
                 for b in layer.self_attn.kv_cache.buffers())
    assert cached == 3 * 40 * kv_cache_bytes_per_token(cfg)


def test_nf4_double_quant_costs_4_127_bits_per_weight():
    assert math.isclose(NF4_BYTES_PER_WEIGHT * 8, 4.127, abs_tol=1e-3)  # Dettmers et al. 2023, sec. 3
