"""The engine's quantized KV pool: greedy output equals ``llmkit.generate`` with the same ``kv_cache_dtype``
token for token, and a quantized pool holds about twice the blocks of bf16 in the same memory."""
import pytest
import torch

from llmkit.engine import LLMEngine, SamplingParams
from llmkit.engine.model_runner import block_bytes
from llmkit.generate import generate_tokens
from tests.engine.conftest import run_arrivals, tiny_model, workload


@pytest.mark.parametrize("kv", ["int8", "fp8"])
def test_quantized_pool_greedy_equals_generate_with_the_same_kv_cache_dtype(tiny, tokenizer, kv):
    reqs = workload(tokenizer.vocab_size, n=10, max_prompt=120, max_out=16, seed=3)
    # small chunks: prompt chunks over a cached prefix read the pool (dequantized), as do decodes (the kernel)
    engine = LLMEngine(tiny, tokenizer, kv_cache_memory="8MiB", kv_cache_dtype=kv, max_num_batched_tokens=48)
    assert engine.runner.caches[0].k.dtype == {"int8": torch.int8, "fp8": torch.float8_e4m3fn}[kv]
    got = run_arrivals(engine, reqs, lambda i: SamplingParams(max_tokens=reqs[i][1]))
    for i, (prompt, max_tokens, _) in enumerate(reqs):
        want = generate_tokens(tiny, torch.tensor([prompt]), max_new_tokens=max_tokens, stop_ids={tokenizer.eos_id},
                               kv_cache_dtype=kv).token_ids[0]
        assert got[str(i)] == want, f"request {i} (prompt {len(prompt)} tokens)"
    assert engine.blocks.cache_hits > 0  # the shared prefix was read back from the quantized pool


def test_quantized_pool_holds_about_twice_the_blocks_of_bf16(tokenizer):
    model = tiny_model(tokenizer, dim=128, n_heads=2, n_kv_heads=1).to(torch.bfloat16)  # 64-dim heads
    blocks = {kv: LLMEngine(model, tokenizer, kv_cache_memory="4MiB", kv_cache_dtype=kv).blocks.num_blocks
              for kv in ("auto", "int8", "fp8")}
    # a 64-dim row: 128 bytes in bf16, 64 bytes of codes + a 4-byte scale quantized
    assert block_bytes(model, 16, torch.bfloat16) / block_bytes(model, 16, torch.bfloat16, "int8") == 128 / 68
    assert blocks["int8"] == blocks["fp8"] == 4 * 2**20 // block_bytes(model, 16, torch.bfloat16, "int8")
    assert blocks["int8"] / blocks["auto"] > 1.85


def test_bad_or_unsupported_kv_cache_dtype_is_refused(tiny, tokenizer):
    with pytest.raises(ValueError, match="choose from auto, int8, fp8"):
        LLMEngine(tiny, tokenizer, kv_cache_memory="1MiB", kv_cache_dtype="int4")
    mla = tiny_model(tokenizer, n_kv_heads=None, attention="mla", kv_lora_rank=16, q_lora_rank=None,
                     qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=16)
    with pytest.raises(ValueError, match="MLA's latent cache is not quantized"):
        LLMEngine(mla, tokenizer, kv_cache_memory="1MiB", kv_cache_dtype="fp8")
