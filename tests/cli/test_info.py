"""``llmkit info``: the computed count beside a preset's published one, any source kind, one-line errors."""
import json

import pytest
import torch

from llmkit import CausalLM, ModelConfig
from llmkit.cli import main
from llmkit.presets import PUBLISHED_PARAMS


def test_preset_shows_computed_and_published_counts(capsys):
    assert main(["info", "mixtral-8x7b"]) == 0
    out = capsys.readouterr().out
    published = PUBLISHED_PARAMS["mixtral-8x7b"]
    assert f"{published:,} ({published / 1e6:.1f} M), published {published:,}" in out
    assert "source           preset mixtral-8x7b" in out and "8 (top-2, 0 shared)" in out


def test_a_preset_without_a_published_count_shows_only_the_computed_one(capsys):
    assert "tiny" not in PUBLISHED_PARAMS
    assert main(["info", "tiny"]) == 0
    assert "published" not in capsys.readouterr().out


def test_checkpoint_directory(tmp_path, capsys):
    cfg = ModelConfig(vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=1, ffn_dim=96, max_seq_len=128)
    torch.manual_seed(0)
    model = CausalLM(cfg)
    model.save_pretrained(tmp_path)
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"llama checkpoint {tmp_path}" in out and f"{model.num_parameters():,}" in out and "MQA" in out
    assert main(["info", str(tmp_path), "--json"]) == 0
    assert ModelConfig.from_dict(json.loads(capsys.readouterr().out)) == cfg


@pytest.mark.parametrize("argv, message", [
    ([], "give a preset, a model to pull, an HF model directory, a .gguf file or a config .json"),
    (["gpt-5"], "unknown preset 'gpt-5'"),
])
def test_bad_input_is_a_one_line_error(capsys, argv, message):
    assert main(["info", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("llmkit info: error:")
