"""``llmkit finetune`` in-process: flags and YAML through the CLI framework, one-line errors, resume, and
``llmkit chat --adapter`` on what it saved."""
import io
import json
import sys
from pathlib import Path

import pytest
import torch

from llmkit.cli import main
from llmkit.cli.args import add_dataclass_arguments, parse_dataclass
from llmkit.finetune import FinetuneConfig
from llmkit.generate import generate, load_model_and_tokenizer
from llmkit.peft import load_adapter

REPO = Path(__file__).resolve().parents[2]


def flags(tiny_dir, chats, out_dir, *extra) -> list[str]:
    train, val = chats
    return ["finetune", "--model", str(tiny_dir), "--data", str(train), "--val_data", str(val), "--out_dir",
            str(out_dir), "--r", "4", "--alpha", "8", "--n_virtual", "4", "--max_steps", "2", "--batch_size", "4",
            "--seq_len", "64", "--warmup_steps", "1", "--device", "cpu", "--plot", "false", *extra]


def run_cli(capsys, argv, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("extra, message", [
    (["--method", "bogus"], "--method: 'bogus' is not one of lora, qlora, dora, full, prefix, prompt"),
    (["--data", "/nonexistent/chats.jsonl"], "no such conversation file '/nonexistent/chats.jsonl'"),
    (["--val_data", "missing.jsonl"], "no such conversation file 'missing.jsonl'"),
    (["--method", "prefix", "--merge"], "cannot be merged"),
    (["--r", "0"], "r=0 must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_dir, chats, tmp_path, capsys, extra, message):
    code, out, err = run_cli(capsys, flags(tiny_dir, chats, tmp_path / "run", *extra))
    assert code == 2 and not out
    assert err.startswith("llmkit finetune: error: ") and err.count("\n") == 1 and message in err


def test_lora_cli_then_chat_with_the_adapter(tiny_dir, chats, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, flags(tiny_dir, chats, out_dir, "--method", "lora"))
    assert code == 0, err
    assert "trainable (" in out and "before: val loss" in out and "after:  val loss" in out
    assert json.loads((out_dir / "finetune.json").read_text())["steps"] == 2

    code, out, err = run_cli(capsys, ["chat", "--model", str(tiny_dir), "--adapter", str(out_dir / "adapter"),
                                      "--temperature", "0", "--max_new_tokens", "8"], "What do bees make?\n",
                             monkeypatch)
    assert code == 0, err
    model, tok = load_model_and_tokenizer(tiny_dir)
    load_adapter(model, out_dir / "adapter").eval()
    with torch.no_grad():
        want = generate(model, tok, [{"role": "user", "content": "What do bees make?"}], max_new_tokens=8).text
    assert out == want + "\n"

    code, out, err = run_cli(capsys, flags(tiny_dir, chats, out_dir, "--method", "lora"))  # same out_dir again
    assert code == 2 and "already holds a fine-tuning run" in err


def test_yaml_recipe_with_flag_override_and_resume(tiny_dir, chats, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: prompt\nn_virtual: 3\nmax_steps: 5\nlr: 0.05\n")
    out_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, flags(tiny_dir, chats, out_dir, "--config", str(recipe), "--max_steps", "1"))
    assert code == 0, err
    report = json.loads((out_dir / "finetune.json").read_text())
    # method and lr from the recipe; n_virtual (4) and max_steps from flags, which override it
    assert {k: report["config"][k] for k in ("method", "lr", "n_virtual")} == {"method": "prompt", "lr": 0.05,
                                                                              "n_virtual": 4}
    assert report["steps"] == 1
    code, _, err = run_cli(capsys, flags(tiny_dir, chats, out_dir, "--config", str(recipe), "--max_steps", "2",
                                         "--resume"))
    assert code == 0, err
    assert json.loads((out_dir / "finetune.json").read_text())["steps"] == 2


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("finetune-*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_parse(recipe):
    import argparse

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, FinetuneConfig)
    cfg = parse_dataclass(FinetuneConfig, parser.parse_args(["--config", str(recipe)]))
    assert cfg.data == "austen-chat" and cfg.out_dir.startswith("runs/")
