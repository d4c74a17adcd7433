import dataclasses
import time
import typing

import pytest

from llmkit import ModelConfig
from llmkit.config import ConfigError
from llmkit.model import count_parameters
from llmkit.presets import PRESETS, PUBLISHED_PARAMS, get_preset
from llmkit.speedrun import SpeedrunConfig
from llmkit.train import TrainConfig
from llmkit.validate import check_choices


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


@pytest.mark.parametrize("cfg, error, message", [
    (ModelConfig(norm="batchnorm"), ConfigError, "ModelConfig.norm='batchnorm': must be one of rmsnorm, layernorm"),
    (TrainConfig(dtype="int8"), ValueError, "TrainConfig.dtype='int8': must be one of fp32, bf16, fp16"),
    (SpeedrunConfig(dtype="fp16"), ValueError, "SpeedrunConfig.dtype='fp16': must be one of fp32, bf16"),
])
def test_one_choice_check_names_the_field_and_lists_the_choices(cfg, error, message):
    with pytest.raises(error) as caught:
        cfg.validate()
    assert str(caught.value) == message


@pytest.mark.parametrize("cls", [ModelConfig, TrainConfig, SpeedrunConfig])
def test_check_choices_covers_every_literal_field(cls):
    hints = typing.get_type_hints(cls)
    literal = [f.name for f in dataclasses.fields(cls) if typing.get_origin(hints[f.name]) is typing.Literal]
    assert literal
    for name in literal:
        for value in typing.get_args(hints[name]):  # every listed value passes
            check_choices(dataclasses.replace(cls(), **{name: value}))
        with pytest.raises(ValueError, match=rf"^{cls.__name__}\.{name}='bogus': must be one of "):
            check_choices(dataclasses.replace(cls(), **{name: "bogus"}))


@pytest.mark.parametrize("kw, field", [
    (dict(minutes=0), "minutes"), (dict(preset="huge"), "preset"), (dict(vocab_size=100), "vocab_size"),
])
def test_speedrun_errors_name_the_field_not_a_flag(kw, field):
    with pytest.raises(ValueError, match=rf"^SpeedrunConfig\.{field}=") as caught:
        SpeedrunConfig(**kw).validate()
    assert "--" not in str(caught.value)


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
