"""Defining properties of the model's parts: RoPE, caches, attention impls, norms, MoE."""
import math

import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.model.attention import attend
from llmkit.model.block import CrossAttentionBlock
from llmkit.model.moe import MoE, load_balancing_loss
from llmkit.model.rope import RotaryEmbedding, apply_rope, dynamic_inv_freq, rope_inv_freq

TINY = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, ffn_dim=96, max_seq_len=64, init_std=0.2)
MLA = dict(attention="mla", kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12,
           rope_layout="interleaved")
VARIANTS = {
    "mha": {},
    "gqa": dict(n_kv_heads=2),
    "mqa": dict(n_kv_heads=1),
    "sliding-window": dict(n_kv_heads=2, sliding_window=4),
    "qk-norm-bias": dict(n_kv_heads=2, qk_norm=True, qkv_bias=True),
    "partial-rotary": dict(rotary_fraction=0.5),
    "head-dim": dict(head_dim=24, n_kv_heads=2),
    "mla": MLA,
    "mla-q-lora": dict(MLA, q_lora_rank=24),
    "moe": dict(n_experts=4, n_experts_per_tok=2, n_shared_experts=1, moe_ffn_dim=32, first_dense_layers=1),
    "learned-pos": dict(pos_embedding="learned"),
    "sinusoidal": dict(pos_embedding="sinusoidal"),
    "post-deepnorm": dict(norm_placement="post", deepnorm=True, norm="layernorm"),
    "sandwich": dict(norm_placement="sandwich"),
    "eager": dict(attn_impl="eager", n_kv_heads=2),
    "yarn": dict(rope_scaling="yarn", rope_factor=4.0, rope_original_max_seq_len=16),
    "gelu-mlp": dict(activation="gelu", gated_mlp=False),
}


def _model(**kw) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(ModelConfig(**{**TINY, **kw})).eval()


def _ids(b=2, t=12):
    return torch.randint(0, TINY["vocab_size"], (b, t), generator=torch.Generator().manual_seed(3))


# ----- RoPE -----
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rope_scores_depend_only_on_relative_position(layout):
    cfg = ModelConfig(**TINY, rope_layout=layout)
    rope = RotaryEmbedding(cfg)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        cq, sq = rope(torch.tensor([[m]]))
        ck, sk = rope(torch.tensor([[n]]))
        return (apply_rope(q, cq, sq, layout) * apply_rope(k, ck, sk, layout)).sum()

    for m, n, shift in [(5, 2, 7), (0, 9, 30), (17, 17, 3)]:
        assert torch.allclose(score(m, n), score(m + shift, n + shift), atol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 3), atol=1e-3)


def test_rope_rotation_preserves_norm_and_position_zero_is_identity():
    cfg = ModelConfig(**TINY)
    rope = RotaryEmbedding(cfg)
    x = torch.randn(2, 4, 6, 16)
    cos, sin = rope(torch.arange(6)[None].expand(2, 6))
    y = apply_rope(x, cos, sin)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(y[:, :, 0], x[:, :, 0])


def _scaled(kind, **kw):
    cfg = ModelConfig(**{**TINY, "rope_scaling": kind, "rope_factor": 8.0, "rope_original_max_seq_len": 32, **kw})
    return cfg, *rope_inv_freq(cfg)


def test_rope_scaling_formulas():
    d, theta, s = 16, 10000.0, 8.0
    base = theta ** (-torch.arange(0, d, 2).float() / d)
    _, inv, att = _scaled("linear")
    assert torch.allclose(inv, base / s) and att == 1.0  # position interpolation: m -> m / s
    _, inv, _ = _scaled("ntk")
    assert torch.allclose(inv, (theta * s ** (d / (d - 2))) ** (-torch.arange(0, d, 2).float() / d))
    cfg, inv, _ = _scaled("dynamic")
    assert torch.allclose(inv, base)  # unchanged within the original context
    assert torch.allclose(dynamic_inv_freq(cfg, d, torch.tensor(20)), base)
    grown = (theta * (s * 64 / 32 - (s - 1)) ** (d / (d - 2))) ** (-torch.arange(0, d, 2).float() / d)
    assert torch.allclose(dynamic_inv_freq(cfg, d, torch.tensor(64)), grown)
    # YaRN: fastest dims (many rotations in the original context) keep their frequency, slowest are interpolated
    _, inv, att = _scaled("yarn")
    assert torch.isclose(inv[0], base[0]) and torch.isclose(inv[-1], base[-1] / s)
    assert math.isclose(att, 0.1 * math.log(s) + 1)
    _, inv_parts, att_parts = _scaled("ntk_by_parts")
    assert torch.allclose(inv_parts, inv) and att_parts == 1.0
    # llama3: wavelength < L/high_freq_factor untouched, > L/low_freq_factor divided by s, smooth in between
    _, inv, _ = _scaled("llama3", rope_low_freq_factor=1.0, rope_high_freq_factor=4.0)
    wavelen = 2 * math.pi / base
    assert torch.allclose(inv[wavelen < 8], base[wavelen < 8])
    assert torch.allclose(inv[wavelen > 32], base[wavelen > 32] / s)
    mid = (wavelen >= 8) & (wavelen <= 32)
    assert mid.any() and ((inv[mid] <= base[mid]) & (inv[mid] >= base[mid] / s)).all()


# ----- caches -----
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kv_cache_decode_equals_full_forward(variant):
    model = _model(**VARIANTS[variant])
    ids = _ids(t=14)
    with torch.no_grad():
        full = model(ids)
        model.setup_caches(max_batch_size=4, max_seq_len=32)
        steps = [model(ids[:, :5], input_pos=torch.arange(5)), model(ids[:, 5:8], input_pos=torch.arange(5, 8))]
        for i in range(8, 14):
            steps.append(model(ids[:, i:i + 1], input_pos=torch.tensor([i])))
    assert (torch.cat(steps, 1) - full).abs().max().item() <= 1e-5


def test_mla_cache_holds_the_latent_not_full_kv():
    model = _model(**MLA)
    model.setup_caches(2, 32)
    cache = model.model.layers[0].self_attn.kv_cache
    assert sorted(n for n, _ in cache.named_buffers()) == ["c_kv", "k_pe"]
    assert cache.c_kv.shape == (2, 32, 16) and cache.k_pe.shape == (2, 32, 8)


def test_left_padded_cached_decode_equals_unpadded():
    model = _model(n_kv_heads=2)
    ids = _ids(2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0
    with torch.no_grad():
        model.setup_caches(2, 16)
        first = model(ids, input_pos=torch.arange(10), attention_mask=mask)
        nxt = torch.tensor([[5], [6]])
        mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        step = model(nxt, input_pos=torch.tensor([10]), attention_mask=mask2)
        model.clear_caches()
        ref = model(torch.cat([ids[1:, 4:], nxt[1:]], 1))
    assert (first[1, 4:] - ref[0, :6]).abs().max() <= 1e-5
    assert (step[1, 0] - ref[0, 6]).abs().max() <= 1e-5


def test_cache_required_for_input_pos():
    with pytest.raises(RuntimeError, match="setup_caches"):
        _model()(_ids(), input_pos=torch.arange(12))


# ----- attention implementations -----
@pytest.mark.parametrize("extra", [{}, dict(sliding_window=3), dict(n_kv_heads=1)])
def test_eager_equals_sdpa(extra):
    sdpa, eager = _model(**extra), _model(attn_impl="eager", **extra)
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        assert torch.allclose(sdpa(ids), eager(ids), atol=1e-5)
        assert torch.allclose(sdpa(ids, attention_mask=mask), eager(ids, attention_mask=mask), atol=1e-5)


def test_attend_matches_explicit_softmax_formula():
    q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    ref = ((q @ kk.transpose(-1, -2) / math.sqrt(8)).masked_fill(~causal, -math.inf)).softmax(-1) @ vv
    for impl in ("sdpa", "eager"):
        assert torch.allclose(attend(q, k, v, None, 8 ** -0.5, impl), ref, atol=1e-5)


def test_sliding_window_limits_what_a_token_sees():
    model = _model(sliding_window=3, n_layers=1)
    ids = _ids(1, 10)
    changed = ids.clone()
    changed[0, 2] = (ids[0, 2] + 1) % TINY["vocab_size"]
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.allclose(a[0, 5:], b[0, 5:], atol=1e-6)  # position 2 is outside every later window (1 layer)
    assert not torch.allclose(a[0, 3], b[0, 3])


# ----- norms and placements -----
@pytest.mark.parametrize("extra", [dict(norm_placement="post"), dict(norm_placement="post", deepnorm=True),
                                   dict(norm_placement="sandwich"), dict(norm="layernorm", norm_bias=False)])
def test_placements_train_one_step(extra):
    model = _model(**extra).train()
    ids = _ids(4, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def loss():
        logits = model(ids[:, :-1])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())

    before = loss()
    before.backward()
    opt.step()
    with torch.no_grad():
        assert loss() < before


def test_deepnorm_constants_follow_the_paper():
    cfg = ModelConfig(**TINY, norm_placement="post", deepnorm=True)
    n = TINY["n_layers"]
    assert math.isclose(cfg.deepnorm_alpha, (2 * n) ** 0.25) and math.isclose(cfg.deepnorm_beta, (8 * n) ** -0.25)


# ----- MoE -----
def test_moe_routes_each_token_to_exactly_k_experts_and_aux_loss_formula():
    cfg = ModelConfig(**TINY, n_experts=6, n_experts_per_tok=2, moe_ffn_dim=32)
    torch.manual_seed(0)
    moe = MoE(cfg)
    torch.nn.init.normal_(moe.gate.weight, std=0.5)
    x = torch.randn(3, 7, cfg.dim)
    weights, ids, probs = moe.gate(x.reshape(-1, cfg.dim))
    assert ids.shape == (21, 2) and all(len(set(r.tolist())) == 2 for r in ids)
    assert torch.allclose(weights.sum(-1), torch.ones(21))
    _, aux = moe(x)
    f = torch.stack([(ids == e).any(-1).float().mean() for e in range(6)])
    assert torch.isclose(aux, 6 * (f * probs.mean(0)).sum())
    # each expert only sees its tokens: zeroing one unused expert changes nothing
    unused = [e for e in range(6) if not (ids == e).any()]
    if unused:
        before = moe(x)[0]
        torch.nn.init.zeros_(moe.experts[unused[0]].down_proj.weight)
        assert torch.equal(before, moe(x)[0])


def test_balanced_routing_gives_aux_loss_k():
    probs = torch.full((8, 4), 0.25)  # uniform router, every expert gets the same share of token-slots
    ids = torch.tensor([[0, 1], [2, 3]] * 4)
    assert torch.isclose(load_balancing_loss(probs, ids, 4), torch.tensor(2.0))


def test_model_returns_aux_loss():
    model = _model(n_experts=4, n_experts_per_tok=2, moe_ffn_dim=32)
    logits, aux = model(_ids(), return_aux_loss=True)
    assert logits.shape == (2, 12, 97) and aux.item() > 0 and aux.requires_grad


# ----- cross-attention -----
def test_cross_attention_block_ignores_masked_memory():
    cfg = ModelConfig(**TINY)
    block = CrossAttentionBlock(cfg, memory_dim=32)
    x, memory = torch.randn(2, 5, 64), torch.randn(2, 7, 32)
    mask = torch.ones(2, 7)
    mask[:, 5:] = 0
    out = block(x, memory, mask)
    memory2 = memory.clone()
    memory2[:, 5:] = 100.0
    assert out.shape == x.shape
    assert torch.allclose(out, block(x, memory2, mask), atol=1e-6)
    assert not torch.allclose(out, block(x, memory2), atol=1e-3)


# ----- compile -----
@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = _model(n_kv_heads=2)
    ids = _ids(1, 8)
    with torch.no_grad():
        model.setup_caches(1, 16)
        model(ids, input_pos=torch.arange(8))
        step = torch.compile(model, fullgraph=True, dynamic=False)
        tok = ids[:, -1:]
        eager = model(tok, input_pos=torch.tensor([8]))
        compiled = step(tok, input_pos=torch.tensor([8]))
    assert torch.allclose(compiled, eager, atol=1e-5)
