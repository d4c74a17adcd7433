"""TrainConfig: validation, JSON round trip, model overrides, the resume rule."""
import json

import pytest

from llmkit.presets import get_preset
from llmkit.train.config import ModelOverrides, TrainConfig, apply_overrides, check_resume


def test_defaults_validate_and_round_trip_through_json():
    cfg = TrainConfig(model_overrides=ModelOverrides(dim=64, resid_dropout=0.1), freeze=["lm_head.*"])
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.validate().to_dict())))
    assert again == cfg


@pytest.mark.parametrize("field,value,message", [
    ("batch_size", 0, "must be > 0"),
    ("min_lr", 1.0, "must not exceed lr"),
    ("schedule", "step", "must be one of"),
    ("dtype", "int8", "must be one of"),
    ("decay_fraction", 0.0, "must be in"),
])
def test_validate_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}=.*{message}"):
        TrainConfig(**{field: value}).validate()


def test_unknown_field_is_refused():
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"learning_rate": 1e-3})


def test_overrides_cover_every_model_field_and_apply():
    cfg = apply_overrides(get_preset("tiny"), ModelOverrides(n_layers=2, attn_dropout=0.1))
    assert (cfg.n_layers, cfg.attn_dropout, cfg.dim) == (2, 0.1, get_preset("tiny").dim)
    assert repr(ModelOverrides(n_layers=2)) == "ModelOverrides(n_layers=2)"


def test_resume_accepts_the_same_config_and_a_larger_max_steps():
    saved = TrainConfig(max_steps=100)
    assert check_resume(saved, saved.to_dict()) == saved
    assert check_resume(saved, {"max_steps": 300}).max_steps == 300
    assert check_resume(saved, {}) == saved


@pytest.mark.parametrize("given,message", [
    ({"lr": 0.5}, "lr: saved 0.001, given 0.5"),
    ({"max_steps": 50}, "max_steps can only be raised"),
    ({"model_overrides": {"dim": 64}}, "model_overrides.dim: saved None, given 64"),
])
def test_resume_refuses_changes(given, message):
    with pytest.raises(ValueError, match=message):
        check_resume(TrainConfig(max_steps=100), given)
