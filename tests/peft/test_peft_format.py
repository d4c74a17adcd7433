"""Adapter files interoperate with peft: ours load in peft on transformers, peft's load in ours.

The same weights live in a tiny random-init transformers Llama and in our CausalLM
(the checkpoint trick of tests/io/test_hf_parity.py); adapters are made non-trivial
(B randomised) so the identity cannot pass by accident.
"""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from llmkit import CausalLM  # noqa: E402
from llmkit.io.errors import CheckpointError  # noqa: E402
from llmkit.peft import (apply_ia3, apply_lora, apply_prefix_tuning, apply_prompt_tuning, disable_adapters,  # noqa: E402
                         load_adapter, save_adapter)

HF_CFG = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False, initializer_range=0.25)
VARIANTS = {
    "lora": dict(target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"]),
    "rslora": dict(target_modules=["q_proj", "k_proj", "o_proj"], use_rslora=True, lora_dropout=0.1),
    "dora": dict(target_modules="all-linear", use_dora=True),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**HF_CFG))
    path = tmp_path_factory.mktemp("hf")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, HF_CFG["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))


def _hf(checkpoint):
    return transformers.LlamaForCausalLM.from_pretrained(checkpoint).float().eval()


def _randomise(params, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def assert_logits_match(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to 1e-4 of the logits' scale. This random model (weights of std 0.25, randomised adapters)
    amplifies fp32 rounding to ~2e-4 in logits of ~7 where two implementations sum in different orders,
    as our fused CPU inference kernels (llmkit.model.fused) and torch's eager ops do; a wrong adapter
    moves them by more than 0.1."""
    err, scale = (got - expected).abs().max().item(), expected.abs().max().item()
    assert err <= 1e-4 * max(scale, 1.0), f"logits differ by {err:.3g} at a scale of {scale:.3g}"


def _ours_kwargs(kw):
    return dict(target_modules=kw["target_modules"], r=4, alpha=8, dropout=kw.get("lora_dropout", 0.0),
                use_rslora=kw.get("use_rslora", False), use_dora=kw.get("use_dora", False))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_our_adapter_loads_in_peft(variant, checkpoint, ids, tmp_path):
    ours = apply_lora(CausalLM.from_pretrained(checkpoint), **_ours_kwargs(VARIANTS[variant])).eval()
    _randomise(p for p in ours.parameters() if p.requires_grad)
    save_adapter(ours, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["use_dora"] == (variant == "dora")
    theirs = peft.PeftModel.from_pretrained(_hf(checkpoint), tmp_path).eval()
    with torch.no_grad():
        expected = theirs(input_ids=ids).logits
        got = ours(ids)
        with disable_adapters(ours):
            base = ours(ids)
    assert_logits_match(got, expected)
    assert (got - base).abs().max().item() > 0.1  # the adapter really changes the output


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_peft_adapter_loads_in_ours(variant, checkpoint, ids, tmp_path):
    kw = dict(VARIANTS[variant])
    theirs = peft.get_peft_model(_hf(checkpoint), peft.LoraConfig(r=4, lora_alpha=8, **kw))
    _randomise(p for n, p in theirs.named_parameters() if p.requires_grad)
    theirs.save_pretrained(tmp_path)
    ours = load_adapter(CausalLM.from_pretrained(checkpoint), tmp_path).eval()
    theirs.eval()
    with torch.no_grad():
        assert_logits_match(ours(ids), theirs(input_ids=ids).logits)
    assert all("lora_" in n for n, p in ours.named_parameters() if p.requires_grad)


def test_ia3_round_trips_through_peft(checkpoint, ids, tmp_path):
    ours = apply_ia3(CausalLM.from_pretrained(checkpoint)).eval()
    _randomise(p for p in ours.parameters() if p.requires_grad)
    save_adapter(ours, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(_hf(checkpoint), tmp_path / "ours").eval()
    theirs.save_pretrained(tmp_path / "theirs")
    again = load_adapter(CausalLM.from_pretrained(checkpoint), tmp_path / "theirs").eval()
    with torch.no_grad():
        expected = theirs(input_ids=ids).logits
        assert_logits_match(ours(ids), expected)
        assert_logits_match(again(ids), expected)


def test_regex_targets_select_exactly_the_wrapped_modules(checkpoint, ids, tmp_path):
    ours = apply_lora(CausalLM.from_pretrained(checkpoint), r"model\.layers\.1\.mlp\.up_proj", r=2).eval()
    _randomise(p for p in ours.parameters() if p.requires_grad)
    save_adapter(ours, tmp_path)
    assert isinstance(json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"], str)
    theirs = peft.PeftModel.from_pretrained(_hf(checkpoint), tmp_path).eval()
    assert sum("lora_A" in n for n, _ in theirs.named_parameters()) == 1
    with torch.no_grad():
        assert_logits_match(ours(ids), theirs(input_ids=ids).logits)


def test_unsupported_and_broken_files_are_refused(checkpoint, tmp_path):
    ours = apply_lora(CausalLM.from_pretrained(checkpoint), ["q_proj"], r=2)
    save_adapter(ours, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "bias": "all"}))
    with pytest.raises(ValueError, match="bias"):
        load_adapter(CausalLM.from_pretrained(checkpoint), tmp_path)
    with pytest.raises(CheckpointError, match="not a peft adapter"):
        load_adapter(CausalLM.from_pretrained(checkpoint), tmp_path / "missing")


VIRTUAL = {"prompt": (apply_prompt_tuning, dict(n_virtual=5), "PROMPT_TUNING"),
           "p-tuning": (apply_prompt_tuning, dict(n_virtual=5, encoder="mlp"), "PROMPT_TUNING"),
           "prefix": (apply_prefix_tuning, dict(n_prefix=5, hidden=16), "PREFIX_TUNING")}


@pytest.mark.parametrize("method", sorted(VIRTUAL))
def test_our_virtual_tokens_load_in_peft(method, checkpoint, ids, tmp_path):
    apply, kw, kind = VIRTUAL[method]
    ours = apply(CausalLM.from_pretrained(checkpoint), **kw).eval()
    _randomise(p for p in ours.parameters() if p.requires_grad)
    save_adapter(ours, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == kind
    theirs = peft.PeftModel.from_pretrained(_hf(checkpoint), tmp_path).eval()
    # no padding: transformers' forward does not derive positions from the mask (left padding is
    # covered by tests/peft/test_adapters.py against the unpadded sequence)
    with torch.no_grad():
        expected = theirs(input_ids=ids).logits[:, -ids.shape[1]:]  # peft keeps the virtual rows
        got = ours(ids)
        with disable_adapters(ours):
            base = ours(ids)
    assert got.shape == expected.shape == ids.shape + (HF_CFG["vocab_size"],)
    assert_logits_match(got, expected)
    assert (got - base).abs().max().item() > 0.1


@pytest.mark.parametrize("kind", ["PROMPT_TUNING", "PREFIX_TUNING"])
def test_peft_virtual_tokens_load_in_ours(kind, checkpoint, ids, tmp_path):
    config = (peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4) if kind == "PROMPT_TUNING" else
              peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    theirs = peft.get_peft_model(_hf(checkpoint), config)
    _randomise(p for p in theirs.parameters() if p.requires_grad)
    theirs.save_pretrained(tmp_path)
    ours = load_adapter(CausalLM.from_pretrained(checkpoint), tmp_path).eval()
    with torch.no_grad():
        expected = theirs.eval()(input_ids=ids).logits[:, -ids.shape[1]:]
        got = ours(ids)
    assert_logits_match(got, expected)
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == (
        {"prefix_encoder.embedding"} if kind == "PREFIX_TUNING" else {"base_model.model.embed_tokens.prompt_embeddings"})


def test_a_virtual_token_table_that_does_not_fit_is_refused(checkpoint, tmp_path):
    save_adapter(apply_prefix_tuning(CausalLM.from_pretrained(checkpoint), n_prefix=3, hidden=8), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "num_virtual_tokens": 4}))
    with pytest.raises(CheckpointError, match="prompt_embeddings has shape"):
        load_adapter(CausalLM.from_pretrained(checkpoint), tmp_path)
