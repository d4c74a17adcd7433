"""The inference interface callers use instead of reaching inside the model (CausalLM and whole-model adapters)."""
import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.generate import generate_tokens
from llmkit.model.metadata import AttentionMetadata
from llmkit.peft import apply_prefix_tuning, apply_prompt_tuning, disable_adapters
from llmkit.peft.qlora import quantize_model_4bit

CFG = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=64,
                  init_std=0.2)


def _model(**kw) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(CFG.replace(**kw)).eval()


def _ids(b=2, t=7):
    return torch.randint(0, CFG.vocab_size, (b, t), generator=torch.Generator().manual_seed(1))


def test_dtype_and_device_follow_the_weights_even_with_a_quantized_body():
    model = _model(tie_word_embeddings=True)
    assert (model.dtype, model.device) == (torch.float32, torch.device("cpu"))
    assert model.to(torch.bfloat16).dtype == torch.bfloat16
    q = quantize_model_4bit(_model())  # packed uint8 linears: not the compute dtype
    assert q.dtype == torch.float32


def test_cache_lifecycle_and_reuse():
    model = _model()
    assert not model.has_cache and model.cache_len == 0
    model.setup_caches(2, 16)
    buf = model.model.layers[0].self_attn.kv_cache.k
    model.setup_caches(2, 16)  # same shape: kept
    assert model.has_cache and model.cache_len == 16 and model.model.layers[0].self_attn.kv_cache.k is buf
    model.setup_caches(3, 16)  # another batch: reallocated
    assert model.model.layers[0].self_attn.kv_cache.k is not buf
    model.setup_caches(3, 16, dtype=torch.bfloat16)
    assert model.model.layers[0].self_attn.kv_cache.k.dtype == torch.bfloat16
    model.clear_caches()
    assert not model.has_cache and model.cache_len == 0


def test_reorder_cache_makes_rows_follow_their_parents():
    model, ids = _model(), _ids(3, 6)
    with torch.no_grad():
        model.setup_caches(3, 16)
        model(ids, input_pos=torch.arange(6))
        order = torch.tensor([2, 0, 0])
        model.reorder_cache(order)
        nxt = torch.tensor([[5], [6], [7]])
        got = model(nxt, input_pos=torch.tensor([6]))
        model.clear_caches()
        want = model(torch.cat([ids[order], nxt], 1))[:, -1:]
    assert (got - want).abs().max().item() <= 1e-5


def test_prefix_kv_is_attended_before_the_tokens_and_not_cached():
    """forward(prefix_kv=) equals running the prefix's keys/values as if they were in the cache."""
    model, ids = _model(), _ids(2, 6)
    n = 3
    prefix = torch.randn(CFG.n_layers, 2, CFG.kv_heads, n, CFG.head_size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(ids, prefix_kv=prefix)
        model.setup_caches(2, 16)
        steps = [model(ids[:, :4], input_pos=torch.arange(4), prefix_kv=prefix)]
        steps += [model(ids[:, i:i + 1], input_pos=torch.tensor([i]), prefix_kv=prefix) for i in (4, 5)]
        # the same keys/values written into cache slots 0..n-1 of a plain cached run
        model.setup_caches(2, 16 + n)
        for layer, kv in zip(model.model.layers, prefix):
            layer.self_attn.kv_cache.k[:, :, :n] = kv[0]
            layer.self_attn.kv_cache.v[:, :, :n] = kv[1]
        ref = model(ids, input_pos=torch.arange(n, n + 6))
    assert (torch.cat(steps, 1) - full).abs().max().item() <= 1e-5
    assert (full - ref).abs().max().item() <= 1e-5
    assert (full - model(ids)).abs().max().item() > 1e-3


def test_blocks_take_one_attention_metadata_argument():
    model, ids = _model(), _ids(1, 5)
    x = model.model.embed_tokens(ids)
    rope = model.model.rotary_emb(torch.arange(5)[None])
    y, aux = model.model.layers[0](x, AttentionMetadata(rope=rope))
    assert y.shape == x.shape and aux is None


@pytest.mark.parametrize("apply", [lambda m: apply_prompt_tuning(m, 4), lambda m: apply_prefix_tuning(m, 4, 16)],
                         ids=["prompt", "prefix"])
def test_whole_model_adapters_offer_the_interface(apply):
    base = _model(tie_word_embeddings=True)
    model = apply(base).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn_like(p))
    assert model.cfg.max_seq_len == CFG.max_seq_len - 4 and not model.cfg.tie_word_embeddings
    assert (model.dtype, model.device) == (base.dtype, base.device)
    model.setup_caches(2, 20)
    assert model.has_cache and model.cache_len == 20
    ids = _ids(2, 5)
    with torch.no_grad():  # beam search reorders the cache through the wrapper
        beams = generate_tokens(model, ids, max_new_tokens=4, num_beams=2).token_ids
        greedy = generate_tokens(model, ids, max_new_tokens=4).token_ids
        seq = ids
        for _ in range(4):
            seq = torch.cat([seq, model(seq)[:, -1:].argmax(-1)], 1)
        with disable_adapters(model):
            plain = generate_tokens(model, ids, max_new_tokens=4).token_ids
    assert greedy == seq[:, 5:].tolist()
    assert all(len(b) == 4 for b in beams)
    assert plain == generate_tokens(base, ids, max_new_tokens=4).token_ids
    model.clear_caches()
    assert not model.has_cache
