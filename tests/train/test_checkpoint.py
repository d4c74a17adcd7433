"""Checkpoint files: contents, atomicity leftovers, keep-last-N, RNG capture, and refusing bad checkpoints."""
import json
import random

import numpy as np
import pytest
import torch

from llmkit.io.errors import CheckpointError
from llmkit.train import Data, Trainer
from llmkit.train.checkpoint import (capture_rng, latest_checkpoint, list_checkpoints, load_checkpoint,
                                     prune_checkpoints, restore_rng)

from .helpers import RandomBatches, tiny_cfg


def _run(tmp_path, **kw):
    cfg = tiny_cfg(tmp_path, max_steps=4, save_every=1, keep_last=2, **kw)
    Trainer(cfg, data=Data(RandomBatches())).fit()
    return cfg


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rng_states_round_trip():
    state = capture_rng()
    first = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng(json.loads(json.dumps(state)))  # survives JSON, as in rng.json
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])


def test_checkpoint_contents_and_keep_last(tmp_path):
    cfg = _run(tmp_path)
    out = tmp_path / "run"
    assert [s for s, _ in list_checkpoints(out)] == [3, 4]  # keep_last=2
    ckpt = load_checkpoint(latest_checkpoint(out))
    names = {f.name for f in ckpt.path.iterdir()}
    assert {"config.json", "model.safetensors", "optimizer.safetensors", "rng.json", "trainer_state.json"} <= names
    assert ckpt.state["step"] == 4 and ckpt.state["loader"] == {"step": 4, "seed": 0}
    assert ckpt.state["train_config"] == cfg.to_dict()
    assert set(ckpt.optim_state["model.norm.weight"]) == {"step", "exp_avg", "exp_avg_sq"}
    assert sorted(ckpt.optim_state) == sorted(n for g in ckpt.state["optimizer_groups"] for n in g["params"])
    # the final model is the last checkpoint's weights, in HF layout with its config
    assert (out / "model" / "model.safetensors").read_bytes() == (ckpt.path / "model.safetensors").read_bytes()


def test_interrupted_save_leftovers_are_ignored_and_cleaned(tmp_path):
    _run(tmp_path)
    out = tmp_path / "run"
    partial = out / "checkpoints" / ".step_000005.abc123"  # what a kill -9 during a save leaves
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(out).name == "step_000004"
    prune_checkpoints(out, keep_last=2)
    assert not partial.exists()


def test_fresh_run_refuses_an_out_dir_with_checkpoints(tmp_path):
    cfg = _run(tmp_path)
    with pytest.raises(ValueError, match="already holds checkpoints.*--resume"):
        Trainer(cfg, data=Data(RandomBatches()))


@pytest.mark.parametrize("damage,message", [
    (lambda p: p.joinpath("optimizer.safetensors").write_bytes(
        p.joinpath("optimizer.safetensors").read_bytes()[:-8] + b"\0" * 8), "optimizer.safetensors does not match"),
    (lambda p: p.joinpath("rng.json").unlink(), "rng.json is missing"),
    (lambda p: p.joinpath("trainer_state.json").write_text("{\"step\": 4,"), "trainer_state.json is corrupt"),
    (lambda p: p.joinpath("trainer_state.json").write_text("[4]"), "trainer_state.json must hold a JSON object"),
])
def test_corrupt_checkpoint_fails_clearly_and_writes_nothing(tmp_path, damage, message):
    cfg = _run(tmp_path)
    out = tmp_path / "run"
    damage(latest_checkpoint(out))
    before = _snapshot(out)
    with pytest.raises(CheckpointError, match=message):
        Trainer(cfg.__class__.from_dict({**cfg.to_dict(), "max_steps": 8}), data=Data(RandomBatches()), resume=True)
    assert _snapshot(out) == before


def test_mismatched_config_is_refused(tmp_path):
    cfg = _run(tmp_path)
    changed = cfg.__class__.from_dict({**cfg.to_dict(), "model_overrides": {**cfg.to_dict()["model_overrides"],
                                                                            "dim": 64}})
    with pytest.raises(CheckpointError, match="model_overrides.dim: saved 32, given 64"):
        Trainer(changed, data=Data(RandomBatches()), resume=True)


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        Trainer(tiny_cfg(tmp_path), data=Data(RandomBatches()), resume=True)
