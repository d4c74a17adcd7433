"""Paged attention through the model: a flattened step over a block pool equals the plain forward."""
import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.generate import decode_attention as kernel
from llmkit.generate import prefill_attention
from llmkit.model.metadata import PagedMetadata
from llmkit.model.paged import PagedKVCache, PagedLatentCache, decode_attention

BASE = dict(vocab_size=61, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=128, init_std=0.2)
MLA = dict(BASE, n_kv_heads=None, attention="mla", kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=8, qk_rope_head_dim=8,
           v_head_dim=16)


def pools(model, num_blocks, block_size):
    cfg = model.cfg
    if cfg.attention == "mla":
        return [PagedLatentCache(num_blocks, block_size, cfg.kv_lora_rank, cfg.qk_rope_head_dim, model.dtype)
                for _ in range(cfg.n_layers)]
    return [PagedKVCache(num_blocks, block_size, cfg.kv_heads, cfg.head_size, cfg.head_size, model.dtype)
            for _ in range(cfg.n_layers)]


def step(model, caches, block_size, seqs, prefill_kernel=None):
    """One flattened step; seqs = [(token ids so far, block table, computed, new)] decodes first."""
    ids, pos, slots, tables, lens, qlens, last = [], [], [], [], [], [], []
    for tokens, table, done, new in seqs:
        for p in range(done, done + new):
            ids.append(tokens[p])
            pos.append(p)
            slots.append(table[p // block_size] * block_size + p % block_size)
        tables.append(table + [0] * (8 - len(table)))
        lens.append(done + new)
        qlens.append(new)
        last.append(len(ids) - 1)
    paged = PagedMetadata(caches, torch.tensor(slots), torch.tensor(tables, dtype=torch.int32),
                          torch.tensor(lens, dtype=torch.int32), qlens, lens, sum(1 for q in qlens if q == 1),
                          prefill_kernel=prefill_kernel)
    return model(torch.tensor([ids]), position_ids=torch.tensor([pos]), paged=paged,
                 logits_indices=torch.tensor(last))[0]


def prefill_kernel_or_skip(dtype, head_dim, v_head_dim):
    if not prefill_attention.supported(dtype, head_dim, v_head_dim):
        pytest.skip("the prefill kernel needs a C++ compiler and AVX-512 (AVX512-BF16 for bf16)")
    return prefill_attention.paged_prefill_attention


@pytest.mark.parametrize("cfg,prefill", [(BASE, False), (BASE, True), (MLA, False)], ids=["gqa", "gqa-kernel", "mla"])
def test_paged_steps_equal_full_forward(cfg, prefill):
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(**cfg)).eval()
    kern = prefill_kernel_or_skip(torch.float32, model.cfg.head_size, model.cfg.head_size) if prefill else None
    bs = 4
    caches = pools(model, 32, bs)
    a = torch.randint(0, 61, (23,)).tolist()
    b = torch.randint(0, 61, (9,)).tolist()
    ta, tb = [5, 3, 9, 0, 12, 7], [2, 30, 6]  # scattered blocks
    with torch.no_grad():
        full_a, full_b = model(torch.tensor([a]))[0], model(torch.tensor([b]))[0]
        out = step(model, caches, bs, [(a, ta, 0, 10), (b, tb, 0, 6)], kern)  # two prompt chunks
        torch.testing.assert_close(out, torch.stack([full_a[9], full_b[5]]), atol=1e-4, rtol=1e-4)
        out = step(model, caches, bs, [(b, tb, 6, 1), (a, ta, 10, 12)], kern)  # a decode and a chunk over a prefix
        torch.testing.assert_close(out, torch.stack([full_b[6], full_a[21]]), atol=1e-4, rtol=1e-4)
        out = step(model, caches, bs, [(a, ta, 22, 1), (b, tb, 7, 1)], kern)
        torch.testing.assert_close(out, torch.stack([full_a[22], full_b[7]]), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bs", [16, 12])  # the kernel finds a slot's block by a shift, or else by a division
def test_paged_decode_kernel_matches_gather(dtype, bs):
    if not kernel.load():
        pytest.skip("no C++ compiler for the kernel")
    torch.manual_seed(0)
    nb, hkv, d = 40, 3, 64
    k_pool, v_pool = torch.randn(nb, bs, hkv, d).to(dtype), torch.randn(nb, bs, hkv, d).to(dtype)
    lens = torch.tensor([1, 17, 150, 33], dtype=torch.int32)
    tables = torch.stack([torch.randperm(nb)[:13] for _ in range(4)]).to(torch.int32)
    q = torch.randn(4, 9, d).to(dtype)
    fast = kernel.paged_decode_attention(q.view(4, hkv, 3, d), k_pool, v_pool, tables, lens, 0.125).reshape(4, 9, d)
    ref = []
    for i in range(4):  # per sequence: gather its slots, plain softmax attention
        n = int(lens[i])
        ks = k_pool[tables[i].long()].flatten(0, 1)[:n].float().repeat_interleave(3, dim=1)  # (S, H, D)
        vs = v_pool[tables[i].long()].flatten(0, 1)[:n].float().repeat_interleave(3, dim=1)
        p = (torch.einsum("hd,shd->hs", q[i].float(), ks) * 0.125).softmax(-1)
        ref.append(torch.einsum("hs,shd->hd", p, vs))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(fast.float(), torch.stack(ref), atol=tol, rtol=tol)
    gathered = decode_attention(q, k_pool, v_pool, tables, lens, 150, 0.125)
    torch.testing.assert_close(gathered.float(), torch.stack(ref), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,d,dv,bs", [(9, 3, 64, 64, 16), (2, 2, 80, 80, 12), (8, 1, 32, 48, 16)])
def test_paged_prefill_kernel_matches_reference(dtype, heads, kv_heads, d, dv, bs):
    """Prompt chunks, some after a cached prefix, of 1 to 200 queries (several row tiles), against a float64
    causal softmax over each sequence's gathered slots."""
    fast = prefill_kernel_or_skip(dtype, d, dv)
    torch.manual_seed(0)
    nb = 64
    k_pool, v_pool = torch.randn(nb, bs, kv_heads, d).to(dtype), torch.randn(nb, bs, kv_heads, dv).to(dtype)
    qlens, ctxs = [1, 37, 200, 5, 64], [1, 37, 233, 170, 70]
    tables = torch.stack([torch.randperm(nb)[:20] for _ in qlens]).to(torch.int32)
    q = torch.randn(sum(qlens), heads, d).to(dtype)
    out = fast(q, k_pool, v_pool, tables, qlens, ctxs, 0.3)
    ref, start = [], 0
    for i, (t, s) in enumerate(zip(qlens, ctxs)):
        ks, vs = (pool[tables[i].long()].flatten(0, 1)[:s].double().repeat_interleave(heads // kv_heads, dim=1)
                  for pool in (k_pool, v_pool))  # (S, H, D)
        scores = torch.einsum("thd,shd->hts", q[start:start + t].double(), ks) * 0.3
        allowed = torch.ones(t, s, dtype=torch.bool).tril(s - t)  # query r is slot s - t + r
        p = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        ref.append(torch.einsum("hts,shd->thd", p, vs))
        start += t
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), torch.cat(ref), atol=tol, rtol=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attn's paged kernel needs a GPU")
def test_flash_attn_paged_decode_matches_gather():
    pytest.importorskip("flash_attn")
    from llmkit.model.paged import flash_paged_ok

    torch.manual_seed(0)
    nb, bs, hkv, d = 6, 256, 2, 64
    k_pool = torch.randn(nb, bs, hkv, d, device="cuda", dtype=torch.bfloat16)
    v_pool = torch.randn(nb, bs, hkv, d, device="cuda", dtype=torch.bfloat16)
    tables = torch.tensor([[3, 1, 0], [5, 2, 4]], dtype=torch.int32, device="cuda")
    lens = torch.tensor([300, 700], dtype=torch.int32, device="cuda")
    q = torch.randn(2, 8, d, device="cuda", dtype=torch.bfloat16)
    assert flash_paged_ok(q, k_pool)
    fast = decode_attention(q, k_pool, v_pool, tables, lens, 700, 0.125)
    slow = decode_attention(q.float(), k_pool.float(), v_pool.float(), tables, lens, 700, 0.125)  # gather path
    torch.testing.assert_close(fast.float(), slow, atol=2e-2, rtol=2e-2)
