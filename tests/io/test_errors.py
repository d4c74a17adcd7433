"""Bad checkpoints fail with a CheckpointError that names the problem."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmkit import CausalLM, ModelConfig
from llmkit.io import CheckpointError

CFG = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=32)


@pytest.fixture
def ckpt(tmp_path):
    CausalLM(CFG).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("llmkit_config")
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def _edit_weights(path, fn):
    state = load_file(path / "model.safetensors")
    fn(state)
    save_file(state, path / "model.safetensors")


def test_round_trip_is_exact(ckpt):
    model = CausalLM.from_pretrained(ckpt)
    ref = CausalLM(CFG)
    ref.load_state_dict(load_file(ckpt / "model.safetensors"))
    ids = torch.randint(0, 64, (1, 9))
    assert torch.equal(model(ids), ref(ids))


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        CausalLM.from_pretrained(tmp_path / "nope")


def test_unknown_model_type(ckpt):
    _edit_config(ckpt, model_type="gpt_bigcode")
    with pytest.raises(CheckpointError, match="unsupported model_type 'gpt_bigcode'"):
        CausalLM.from_pretrained(ckpt)


def test_config_failing_validation(ckpt):
    _edit_config(ckpt, num_key_value_heads=3)
    with pytest.raises(CheckpointError, match="n_kv_heads"):
        CausalLM.from_pretrained(ckpt)


def test_missing_tensor_is_named(ckpt):
    _edit_weights(ckpt, lambda s: s.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing 1 tensor.*model\.layers\.1\.self_attn\.k_proj\.weight"):
        CausalLM.from_pretrained(ckpt)


def test_unexpected_tensor_is_named(ckpt):
    _edit_weights(ckpt, lambda s: s.update({"model.layers.9.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor.*model\.layers\.9\.extra\.weight"):
        CausalLM.from_pretrained(ckpt)


def test_shape_mismatch_names_tensor_and_shapes(ckpt):
    _edit_weights(ckpt, lambda s: s.update({"model.norm.weight": torch.ones(31)}))
    with pytest.raises(CheckpointError, match=r"model\.norm\.weight has shape \(31,\), the config expects \(32,\)"):
        CausalLM.from_pretrained(ckpt)


def test_truncated_file(ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        CausalLM.from_pretrained(ckpt)


def test_corrupt_config(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        CausalLM.from_pretrained(ckpt)


def test_pickled_weights_are_refused(ckpt):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="safetensors only"):
        CausalLM.from_pretrained(ckpt)


def test_save_is_atomic_and_replaces(ckpt, monkeypatch):
    import llmkit.io.hf as hf

    before = (ckpt / "model.safetensors").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(hf, "save_file", boom)
    with pytest.raises(OSError):
        CausalLM(CFG).save_pretrained(ckpt)
    assert (ckpt / "model.safetensors").read_bytes() == before  # the old checkpoint survives
    assert [p.name for p in ckpt.parent.iterdir()] == ["m"]  # no temp debris


def test_non_hf_config_round_trips_with_llmkit_type(tmp_path):
    cfg = CFG.replace(norm="layernorm", norm_placement="post", pos_embedding="learned", gated_mlp=False, activation="gelu")
    model = CausalLM(cfg)
    model.save_pretrained(tmp_path / "x")
    assert json.loads((tmp_path / "x" / "config.json").read_text())["model_type"] == "llmkit"
    ids = torch.randint(0, 64, (1, 5))
    assert torch.equal(CausalLM.from_pretrained(tmp_path / "x")(ids), model.eval()(ids))
