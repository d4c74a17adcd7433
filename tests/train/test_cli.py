"""``llmkit train``: recipe + flag overrides, --resume rules, Ctrl-C in a real process."""
import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llmkit.cli import main
from llmkit.train.checkpoint import latest_checkpoint

from .helpers import TINY


@pytest.fixture
def recipe(tmp_path, byte_shards):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "model": "tiny", "model_overrides": TINY, "data": str(byte_shards), "seq_len": 16, "batch_size": 4,
        "max_steps": 3, "warmup_steps": 1, "lr": "3e-3", "device": "cpu", "eval_every": 2, "eval_batches": 2,
        "save_every": 2, "schedule": "constant", "out_dir": str(tmp_path / "run"),
    }))
    return path


def test_recipe_flags_and_resume(tmp_path, recipe, capsys):
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--max-steps", "2", "--model_overrides.n_layers", "1", "--plot", "true"]) == 0
    state = json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())
    cfg = state["train_config"]
    assert (cfg["lr"], cfg["max_steps"], cfg["model_overrides"]["n_layers"], cfg["model_overrides"]["dim"]) == \
        (3e-3, 2, 1, 32)  # YAML string "3e-3" became a float; flags override the recipe
    assert (out / "model" / "config.json").exists()
    if importlib.util.find_spec("matplotlib"):
        assert (out / "curves.png").stat().st_size > 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "grad_norm", "tok_per_s"} <= set(records[0])
    assert {"val_loss", "val_ppl", "val_bpb"} <= set(records[-1])

    assert main(["train", "--resume", str(out), "--max_steps", "4"]) == 0
    assert json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())["step"] == 4

    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--lr", "0.001"]) == 2  # equal to the default, still a change
    assert "lr: saved 0.003, given 0.001" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--max_steps", "3"]) == 2
    assert "can only be raised" in capsys.readouterr().err
    assert main(["train", str(recipe)]) == 2  # a fresh run must not overwrite this out_dir
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_bad_values_are_usage_errors(recipe, capsys):
    assert main(["train", str(recipe), "--schedule", "step"]) == 2
    assert "step" in capsys.readouterr().err
    assert main(["train", str(recipe), "--batch_size", "0"]) == 2
    assert "batch_size" in capsys.readouterr().err


@pytest.mark.slow
def test_sigint_finishes_the_step_saves_and_exits_130(tmp_path, recipe):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from llmkit.cli import main; sys.exit(main(sys.argv[1:]))",
         "train", str(recipe), "--max_steps", "100000", "--save_every", "0", "--eval_every", "0", "--plot", "false"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    last_logged = json.loads(metrics.read_text().splitlines()[-1])["step"]
    ckpt = latest_checkpoint(out)
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == last_logged >= 3
    assert "SIGINT" in stdout and f"--resume {out}" in stdout


TRAIN_RECIPES = ["tiny-shakespeare.yaml"]  # recipes/ also holds other verbs' recipes


@pytest.mark.parametrize("name", TRAIN_RECIPES)
def test_recipes_are_valid_train_configs(name):
    path = Path(__file__).parents[2] / "recipes" / name
    from llmkit.cli.args import UsageError, parse_dataclass
    from llmkit.cli.train import Args, given_fields
    from llmkit.train import TrainConfig

    try:
        args = parse_dataclass(Args, argparse.Namespace(config=str(path)))
    except UsageError as e:
        pytest.fail(f"{path.name}: {e}")
    TrainConfig.from_dict(given_fields(args)).validate()
