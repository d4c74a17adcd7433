import time

import pytest

from llmkit import ModelConfig
from llmkit.config import ConfigError
from llmkit.model import count_parameters
from llmkit.presets import PRESETS, PUBLISHED_PARAMS, get_preset


def test_json_round_trip(tmp_path):
    cfg = ModelConfig(dim=128, n_heads=4, n_kv_heads=2, rope_scaling="yarn", rope_factor=4.0, eos_token_id=[1, 2])
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert ModelConfig.from_json(tmp_path / "c.json") == cfg
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_config_is_frozen():
    with pytest.raises(Exception):
        ModelConfig().dim = 3


@pytest.mark.parametrize("kw, field", [
    (dict(norm="batchnorm"), "norm"),
    (dict(n_heads=8, n_kv_heads=3), "n_kv_heads"),
    (dict(rope_scaling="magic"), "rope_scaling"),
    (dict(dim=100, n_heads=8), "head_dim"),
    (dict(rotary_fraction=0.0), "rotary_fraction"),
    (dict(deepnorm=True), "deepnorm"),
    (dict(n_experts=4, n_experts_per_tok=5), "n_experts_per_tok"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(sliding_window=0), "sliding_window"),
])
def test_validate_names_the_field(kw, field):
    with pytest.raises(ConfigError, match=rf"ModelConfig\.{field}="):
        ModelConfig(**kw).validate()


def test_unknown_field_is_an_error():
    with pytest.raises(ConfigError, match="hidden_size"):
        ModelConfig.from_dict({"hidden_size": 3})


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_preset_parameter_counts_match_published(name):
    start = time.perf_counter()
    n = count_parameters(get_preset(name))
    assert abs(n / PUBLISHED_PARAMS[name] - 1) < 1e-3
    assert time.perf_counter() - start < 30  # meta device: no allocation (generous bound for a loaded CI box)


def test_every_preset_validates_and_tiny_is_small():
    for cfg in PRESETS.values():
        cfg.validate()
    assert 1e6 < count_parameters(PRESETS["tiny"]) < 2e7
    with pytest.raises(KeyError, match="known presets"):
        get_preset("gpt-5")
