"""Parity with transformers on tiny random-init checkpoints that transformers itself writes.

Both directions: HF writes -> we load -> equal logits; we write -> HF loads -> equal logits.
"""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from llmkit import CausalLM  # noqa: E402

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128, tie_word_embeddings=False, initializer_range=0.25)
MLA = dict(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=4,
           n_shared_experts=1, moe_intermediate_size=32, num_experts_per_tok=2, first_k_dense_replace=1)

CASES = {
    "llama-mha": ("LlamaConfig", dict(num_key_value_heads=4)),
    "llama-gqa-tied": ("LlamaConfig", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "llama-mqa-bias": ("LlamaConfig", dict(num_key_value_heads=1, attention_bias=True, mlp_bias=True)),
    "llama-headdim": ("LlamaConfig", dict(num_key_value_heads=2, head_dim=24)),
    "llama-rope-linear": ("LlamaConfig", dict(num_key_value_heads=2, rope_parameters=dict(rope_type="linear", factor=4.0, rope_theta=10000.0))),
    "llama-rope-dynamic": ("LlamaConfig", dict(num_key_value_heads=2, max_position_embeddings=16,
                                                rope_parameters=dict(rope_type="dynamic", factor=2.0, rope_theta=10000.0))),
    "llama-rope-yarn": ("LlamaConfig", dict(num_key_value_heads=2, rope_parameters=dict(
        rope_type="yarn", factor=4.0, rope_theta=10000.0, original_max_position_embeddings=32))),
    "llama-rope-llama3": ("LlamaConfig", dict(num_key_value_heads=2, rope_parameters=dict(
        rope_type="llama3", factor=8.0, rope_theta=500000.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16))),
    "mistral-window": ("MistralConfig", dict(num_key_value_heads=2, sliding_window=5)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(num_key_value_heads=2, head_dim=16)),
    "mixtral": ("MixtralConfig", dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)),
    "deepseek-v2": ("DeepseekV2Config", dict(MLA, q_lora_rank=None, rope_parameters=dict(
        rope_type="yarn", factor=4.0, rope_theta=10000.0, original_max_position_embeddings=32, mscale=0.707,
        mscale_all_dim=0.707, beta_fast=32, beta_slow=1))),
    "deepseek-v2-group": ("DeepseekV2Config", dict(MLA, q_lora_rank=24, topk_method="group_limited_greedy",
                                                   n_group=2, topk_group=1, routed_scaling_factor=1.5)),
    "deepseek-v3": ("DeepseekV3Config", dict(MLA, q_lora_rank=24, n_group=2, topk_group=1, norm_topk_prob=True,
                                             routed_scaling_factor=2.5)),
}


def _hf_model(case: str, tmp_path):
    cls_name, kw = CASES[case]
    cfg = getattr(transformers, cls_name)(**{**BASE, **kw})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():  # make norms, biases and router biases non-trivial so a swapped tensor shows up
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if "e_score_correction_bias" in name:
                b.copy_(0.1 * torch.randn_like(b))
    path = tmp_path / case
    model.save_pretrained(path)
    return model, path


def _ids(seq=20):
    return torch.randint(0, BASE["vocab_size"], (2, seq), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_hf_checkpoint_matches_transformers(case, tmp_path):
    hf, path = _hf_model(case, tmp_path)
    ours = CausalLM.from_pretrained(path)
    ids = _ids()
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("case", sorted(CASES))
def test_our_checkpoint_loads_in_transformers(case, tmp_path):
    _, path = _hf_model(case, tmp_path)
    ours = CausalLM.from_pretrained(path)
    out = tmp_path / "ours"
    ours.save_pretrained(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    ids = _ids()
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max().item() <= 1e-4


def test_left_padded_batch_matches_transformers(tmp_path):
    hf, path = _hf_model("llama-gqa-tied", tmp_path)
    ours = CausalLM.from_pretrained(path)
    ids = _ids(12)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # first row left-padded by 5
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask, position_ids=pos).logits
        got = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= 1e-4
    # the padded row's real tokens equal the unpadded forward of the same tokens
    alone = ours(ids[:1, 5:])
    assert (got[0, 5:] - alone[0]).abs().max().item() <= 1e-4


def test_sharded_save_round_trip(tmp_path):
    hf, path = _hf_model("llama-gqa-tied", tmp_path)
    ours = CausalLM.from_pretrained(path)
    ours.save_pretrained(tmp_path / "sharded", max_shard_bytes=20_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    again = CausalLM.from_pretrained(tmp_path / "sharded")
    hf2 = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sharded").float().eval()
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(again(ids), ours(ids))
        assert (hf2(ids).logits - ours(ids)).abs().max().item() <= 1e-4


def test_checkpoints_are_sensitive():
    """Guard for the tests above: logits of these tiny models are O(1), so 1e-4 is a tight bound."""
    import tempfile
    from pathlib import Path

    hf, _ = _hf_model("llama-gqa-tied", Path(tempfile.mkdtemp()))
    with torch.no_grad():
        assert hf(_ids()).logits.std().item() > 0.5
