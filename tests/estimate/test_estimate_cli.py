"""``llmkit estimate``: JSON keys, model sources (preset, JSON files, --config, overrides), one-line errors."""
import json

import pytest

from llmkit.cli import main
from llmkit.estimate import estimate
from llmkit.presets import PRESETS

KEYS = {"params", "train_flops", "chinchilla_tokens", "memory_full_gb", "memory_lora_gb", "memory_qlora_gb",
        "kv_cache_bytes_per_token"}


def _json(capsys, argv: list[str]) -> dict:
    assert main(["estimate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_has_the_documented_keys(capsys):
    out = _json(capsys, ["--preset", "tiny"])
    assert KEYS <= set(out)
    assert out["chinchilla_tokens"] == 20 * out["params"]
    assert out == json.loads(json.dumps(estimate(PRESETS["tiny"]).to_dict()))


def test_text_report(capsys):
    assert main(["estimate", "--preset", "mixtral-8x7b", "--flops", "1e23", "--batch", "2", "--seq", "1024"]) == 0
    out = capsys.readouterr().out
    assert "active per token" in out and "compute-optimal" in out and "QLoRA r=8" in out


def test_model_config_json_via_config_and_preset(tmp_path, capsys):
    path = tmp_path / "model.json"
    PRESETS["tiny"].to_json(path)
    expected = _json(capsys, ["--preset", "tiny"])
    assert _json(capsys, ["--config", str(path)]) == expected  # the CLI's --config file, keys = ModelConfig fields
    assert _json(capsys, ["--preset", str(path)]) == expected


def test_hf_config_json_and_directory(tmp_path, capsys):
    hf = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 32,
          "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    assert _json(capsys, ["--preset", str(tmp_path / "config.json")])["params"] == 8_030_261_248
    assert _json(capsys, ["--preset", str(tmp_path)])["kv_cache_bytes_per_token"] == 131072


def test_flags_override_the_preset(capsys):
    out = _json(capsys, ["--preset", "llama-3-8b", "--n_kv_heads", "1", "--tokens", "1e12", "--batch", "2"])
    assert out["kv_cache_bytes_per_token"] == 131072 // 8
    assert out["tokens"] == 10**12 and out["batch"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--preset", "gpt-5"], "unknown preset 'gpt-5'"),
    (["--preset", "missing/config.json"], "no such model config"),
    (["--preset", "tiny", "--mfu", "1.5"], "mfu"),
    ([], "give --preset"),
])
def test_bad_input_is_a_one_line_error(capsys, argv, message):
    assert main(["estimate", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("llmkit estimate: error:")
