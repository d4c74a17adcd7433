"""KV-cache quantization: the quantizer's error bounds, the C++ kernels on int8/fp8 caches against
dequantize-then-attend, and the static cache inside the model and ``llmkit.generate``."""
import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.generate import decode_attention as kernel
from llmkit.generate import generate_tokens
from llmkit.model.paged import PagedKVCache, decode_attention
from llmkit.quant.kv import dequantize_kv, kv_storage_dtype, quantize_kv

QDTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
BASE = dict(vocab_size=61, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=256, init_std=0.2)
built = pytest.mark.skipif(not kernel.load(), reason="the C++ decode-attention kernel could not be built here")


def rows(n=512, d=64, seed=0):
    """(n, 4, d) K/V-like rows of very different magnitudes, with outlier channels and an all-zero row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, d, generator=g) * torch.logspace(-3, 2, n)[:, None, None]
    x[::7, :, 3] *= 20  # an outlier channel in some rows
    x[5] = 0
    return x


def test_int8_round_trip_within_half_a_step():
    x = rows()
    codes, scale = quantize_kv(x, torch.int8)
    assert codes.dtype == torch.int8 and scale.shape == x.shape[:-1] and scale.dtype == torch.float32
    assert codes.abs().max() <= 127
    torch.testing.assert_close(scale, x.abs().amax(-1).clamp(min=torch.finfo(torch.float32).tiny) / 127)
    err = (dequantize_kv(codes, scale, torch.float32) - x).abs()
    assert (err <= scale[..., None] * 0.5 * (1 + 1e-5)).all()  # round to nearest
    assert (dequantize_kv(codes, scale, torch.float32)[5] == 0).all()


def test_fp8_round_trip_within_e4m3_precision():
    x = rows()
    codes, scale = quantize_kv(x, torch.float8_e4m3fn)
    assert codes.dtype == torch.float8_e4m3fn and scale.shape == x.shape[:-1]
    xhat = dequantize_kv(codes, scale, torch.float32)
    assert torch.isfinite(xhat).all()
    # 3 mantissa bits: relative error <= 2^-4 for normal codes; subnormal steps are 2^-9 of the scale
    bound = x.abs() * 2**-4 + scale[..., None] * 2**-10
    assert ((xhat - x).abs() <= bound * (1 + 1e-5)).all()
    torch.testing.assert_close(xhat.abs().amax(-1), x.abs().amax(-1))  # each row's absmax maps onto 448 exactly


@pytest.mark.parametrize("name", ["int4", "fp16", "INT8", ""])
def test_unknown_kv_cache_dtype_names_the_choices(name):
    with pytest.raises(ValueError, match="choose from auto, int8, fp8"):
        kv_storage_dtype(name)
    model = CausalLM(ModelConfig(**BASE))
    with pytest.raises(ValueError, match="choose from auto, int8, fp8"):
        model.setup_caches(1, 16, kv_cache_dtype=name)
    with pytest.raises(ValueError, match="choose from auto, int8, fp8"):
        generate_tokens(model.eval(), torch.tensor([[1, 2]]), max_new_tokens=2, kv_cache_dtype=name)


def test_mla_latent_cache_is_refused():
    mla = CausalLM(ModelConfig(**dict(BASE, n_kv_heads=None, attention="mla", kv_lora_rank=16, q_lora_rank=None,
                                      qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=16)))
    with pytest.raises(ValueError, match="MLA's latent cache is not quantized"):
        mla.setup_caches(1, 16, kv_cache_dtype="int8")


def _reference(q, k, v, mask):
    """fp64 softmax attention over already dequantized k, v (B, H, S, D); mask (B, S)."""
    scores = (q.double() @ k.double().transpose(-1, -2)) * 0.125
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return scores.softmax(-1) @ v.double()


@built
@pytest.mark.parametrize("name", QDTYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 40])  # an unrolled head size and the generic path
def test_static_kernel_on_quantized_cache_equals_dequantize_then_attend(name, dtype, d):
    g = torch.Generator().manual_seed(0)
    b, h, t, s = 2, 3, 3, 300
    q = torch.randn(b, h, t, d, generator=g).to(dtype)
    (kq, ks), (vq, vs) = (quantize_kv(torch.randn(b, h, s, d, generator=g), QDTYPES[name]) for _ in range(2))
    mask = torch.rand(b, s, generator=g) < 0.7
    out = kernel.decode_attention(q, kq, vq, mask, 0.125, ks, vs)
    assert out.dtype == dtype
    ref = _reference(q, dequantize_kv(kq, ks, torch.float64), dequantize_kv(vq, vs, torch.float64), mask)
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: the output's rounding
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


def quantized_pool(name, nb=40, bs=16, hkv=3, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    pool = PagedKVCache(nb, bs, hkv, d, d, torch.float32, kv_cache_dtype=name)
    pool.write(torch.arange(nb * bs), torch.randn(nb * bs, hkv, d, generator=g), torch.randn(nb * bs, hkv, d, generator=g))
    return pool


@built
@pytest.mark.parametrize("name", QDTYPES)
def test_paged_kernel_on_quantized_pool_equals_dequantize_then_attend(name):
    torch.manual_seed(0)
    pool = quantized_pool(name)
    assert pool.k.dtype == QDTYPES[name] and len(pool.tensors()) == 4  # copy-on-write copies the scales too
    lens = torch.tensor([1, 17, 150, 33], dtype=torch.int32)
    tables = torch.stack([torch.randperm(40)[:10] for _ in range(4)]).to(torch.int32)
    q = torch.randn(4, 9, 64)
    fast = decode_attention(q, pool.k, pool.v, tables, lens, 150, 0.125, kernel.paged_decode_attention,
                            pool.k_scale, pool.v_scale)
    gathered = decode_attention(q, pool.k, pool.v, tables, lens, 150, 0.125, None, pool.k_scale, pool.v_scale)
    ref = []
    for i in range(4):  # per sequence: dequantize its slots, plain softmax attention
        ks, vs = (x.double().repeat_interleave(3, dim=1) for x in pool.gather(tables[i], int(lens[i])))
        p = (torch.einsum("hd,shd->hs", q[i].double(), ks) * 0.125).softmax(-1)
        ref.append(torch.einsum("hs,shd->hd", p, vs))
    torch.testing.assert_close(fast.double(), torch.stack(ref), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gathered.double(), torch.stack(ref), atol=1e-5, rtol=1e-5)


def teacher_forced(model, ids, kv, kernel_fn=None):
    """(T, V) logits of ``ids`` (1, T): a prefill of the first 8, then one decode step per token."""
    model.setup_caches(1, 64, kv_cache_dtype=kv, decode_kernel=kernel_fn)
    out = [model(ids[:, :8], input_pos=torch.arange(8))[0]]
    for p in range(8, ids.shape[1]):
        out.append(model(ids[:, p:p + 1], input_pos=torch.tensor([p]))[0])
    return torch.cat(out)


@pytest.mark.parametrize("name", QDTYPES)
def test_static_cache_logits_close_to_unquantized(name):
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(**BASE)).eval()
    ids = torch.randint(0, 61, (1, 40))
    fn = kernel.decode_attention if kernel.load() else None
    with torch.no_grad():
        full = model(ids)[0]
        model.setup_caches(1, 64, kv_cache_dtype=name)
        prefill = model(ids, input_pos=torch.arange(40))[0]
        stepped = teacher_forced(model, ids, name, fn)  # decode steps through the C++ kernel
        eager = teacher_forced(model, ids, name)  # decode steps that dequantize
    # every query reads K/V as stored: a prefill's logits are those of decoding token by token
    torch.testing.assert_close(stepped, prefill, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eager, prefill, atol=1e-4, rtol=1e-4)
    # the quantization error on the logits (|logits| reach ~5 in this sharp random model)
    err = (prefill - full).abs().max().item()
    assert 0 < err < {"int8": 0.5, "fp8": 1.5}[name]


def test_beam_search_and_prompt_tuning_decode_with_a_quantized_cache():
    from llmkit.peft.prompt import VirtualTokenLM

    torch.manual_seed(0)
    model = CausalLM(ModelConfig(**BASE)).eval()
    ids = torch.randint(0, 61, (1, 12))
    beams = generate_tokens(model, ids, max_new_tokens=6, num_beams=3, kv_cache_dtype="fp8")
    assert len(beams.token_ids[0]) == 6 and model._caches()[0].k.dtype == torch.float8_e4m3fn
    tuned = VirtualTokenLM(model, n_virtual=4).eval()
    assert len(generate_tokens(tuned, ids, max_new_tokens=4, kv_cache_dtype="int8").token_ids[0]) == 4
    assert model._caches()[0].k.dtype == torch.int8


@pytest.mark.slow
def test_compiled_int8_decode_equals_eager():
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(**BASE)).eval()
    ids = torch.randint(0, 61, (2, 20))
    eager = generate_tokens(model, ids, max_new_tokens=8, kv_cache_dtype="int8")
    assert generate_tokens(model, ids, max_new_tokens=8, kv_cache_dtype="int8", compile=True).token_ids == eager.token_ids


@pytest.mark.slow
def test_smollm2_greedy_with_int8_kv_equals_unquantized(smollm2_gguf):
    from llmkit.generate import generate, load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(smollm2_gguf)
    prompt = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    plain = generate(model, tok, prompt, max_new_tokens=24)
    assert generate(model, tok, prompt, max_new_tokens=24, kv_cache_dtype="int8").token_ids == plain.token_ids
