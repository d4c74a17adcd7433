"""Named model configurations, from a test-sized `tiny` to published 7B-47B checkpoints.

Sizes are the published ones (from each model's ``config.json``), so building a
preset on the meta device gives the published parameter count.
"""
from __future__ import annotations

from llmkit.config import ModelConfig

_LLAMA2_7B = dict(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, ffn_dim=11008, max_seq_len=4096, norm_eps=1e-5)
_LLAMA3_8B = dict(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336,
                  max_seq_len=8192, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001)
_SMOLLM2 = dict(vocab_size=49152, max_seq_len=8192, rope_theta=100000.0, tie_word_embeddings=True,
                bos_token_id=1, eos_token_id=2)

PRESETS: dict[str, ModelConfig] = {
    # ~1.3M parameters: the smallest useful LM, for minute-scale CPU runs
    "nano": ModelConfig(vocab_size=4096, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=352,
                        max_seq_len=512, tie_word_embeddings=True),
    # ~5M parameters: tests, CPU experiments
    "tiny": ModelConfig(vocab_size=4096, dim=256, n_layers=6, n_heads=8, n_kv_heads=4, ffn_dim=704,
                        max_seq_len=512, tie_word_embeddings=True),
    "smollm2-135m": ModelConfig(**_SMOLLM2, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536),
    "smollm2-360m": ModelConfig(**_SMOLLM2, dim=960, n_layers=32, n_heads=15, n_kv_heads=5, ffn_dim=2560),
    "llama-2-7b": ModelConfig(**_LLAMA2_7B, bos_token_id=1, eos_token_id=2),
    "llama-3-8b": ModelConfig(**_LLAMA3_8B),
    "llama-3.1-8b": ModelConfig(**{**_LLAMA3_8B, "max_seq_len": 131072}, rope_scaling="llama3", rope_factor=8.0,
                                rope_original_max_seq_len=8192, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0),
    "llama-3.2-1b": ModelConfig(vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64,
                                ffn_dim=8192, max_seq_len=131072, rope_theta=500000.0, tie_word_embeddings=True,
                                rope_scaling="llama3", rope_factor=32.0, rope_original_max_seq_len=8192,
                                bos_token_id=128000, eos_token_id=128001),
    "mistral-7b": ModelConfig(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336,
                              max_seq_len=32768, sliding_window=4096, bos_token_id=1, eos_token_id=2),
    "qwen2.5-0.5b": ModelConfig(vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2, ffn_dim=4864,
                                max_seq_len=32768, rope_theta=1000000.0, norm_eps=1e-6, qkv_bias=True,
                                tie_word_embeddings=True, eos_token_id=151643),
    "qwen3-0.6b": ModelConfig(vocab_size=151936, dim=1024, n_layers=28, n_heads=16, n_kv_heads=8, head_dim=128,
                              ffn_dim=3072, max_seq_len=40960, rope_theta=1000000.0, norm_eps=1e-6, qk_norm=True,
                              tie_word_embeddings=True, eos_token_id=151645),
    "mixtral-8x7b": ModelConfig(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336,
                                max_seq_len=32768, rope_theta=1000000.0, n_experts=8, n_experts_per_tok=2,
                                norm_topk_prob=True, bos_token_id=1, eos_token_id=2),
    "deepseek-v2-lite": ModelConfig(vocab_size=102400, dim=2048, n_layers=27, n_heads=16, ffn_dim=10944,
                                    max_seq_len=163840, norm_eps=1e-6, attention="mla", kv_lora_rank=512,
                                    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                                    rope_layout="interleaved", rope_scaling="yarn", rope_factor=40.0,
                                    rope_original_max_seq_len=4096, rope_mscale=0.707, rope_mscale_all_dim=0.707,
                                    n_experts=64, n_experts_per_tok=6, n_shared_experts=2, moe_ffn_dim=1408,
                                    first_dense_layers=1, norm_topk_prob=False, router_aux_loss_coef=0.001,
                                    bos_token_id=100000, eos_token_id=100001),
}

# Published parameter counts: `llmkit info` shows them beside the computed count, tests check they agree.
PUBLISHED_PARAMS = {
    "smollm2-135m": 134_515_008,
    "smollm2-360m": 361_821_120,
    "llama-2-7b": 6_738_415_616,
    "llama-3-8b": 8_030_261_248,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.2-1b": 1_235_814_400,
    "mistral-7b": 7_241_732_096,
    "qwen2.5-0.5b": 494_032_768,
    "qwen3-0.6b": 596_049_920,
    "mixtral-8x7b": 46_702_792_704,
    "deepseek-v2-lite": 15_706_484_224,
}


def get_preset(name: str) -> ModelConfig:
    """The config registered as ``name``; raises KeyError listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
