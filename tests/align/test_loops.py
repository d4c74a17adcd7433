"""The alignment loops on a tiny random model: each method moves its held-out metric the right way,
resume continues bit-identically, and the CLI runs them."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llmkit import CausalLM
from llmkit.align import AlignConfig, align
from llmkit.cli import main

from .conftest import ANSWERS, QUESTIONS


def config(tiny_dir, prefs, out_dir, **kw) -> AlignConfig:
    train, val = prefs
    base = dict(model=str(tiny_dir), data=str(train), val_data=str(val), out_dir=str(out_dir), r=4, alpha=8,
                max_steps=12, batch_size=4, seq_len=64, lr=1e-2, warmup_steps=1, device="cpu", samples=1,
                max_new_tokens=6, plot=False)
    return AlignConfig(**{**base, **kw})


@pytest.mark.parametrize("method,loss_type", [("dpo", "sigmoid"), ("dpo", "ipo"), ("orpo", "sigmoid"),
                                              ("simpo", "sigmoid")])
def test_preference_training_raises_held_out_accuracy(tiny_dir, prefs, tmp_path, method, loss_type):
    report = align(config(tiny_dir, prefs, tmp_path, method=method, loss_type=loss_type))
    before, after = report["before"], report["after"]
    assert after["val_pref_acc"] > before["val_pref_acc"]
    assert after["val_pref_acc"] == 1.0 and after["val_margin"] > max(before["val_margin"], 0.0)
    assert after["val_loss"] < before["val_loss"]
    out = tmp_path
    assert {p.name for p in (out / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    assert (out / "report.md").read_text().startswith(f"# llmkit align {method}")
    records = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
    assert records[0] == {"step": 0, **before}  # the starting point, on the curves too
    assert {"reward_chosen", "reward_rejected", "margin", "reward_acc", "tok_per_s"} <= set(records[1])


def test_dpo_without_lora_uses_a_frozen_reference(tiny_dir, prefs, tmp_path):
    report = align(config(tiny_dir, prefs, tmp_path, method="dpo", peft="none", lr=3e-3, max_steps=8))
    assert report["before"]["val_loss"] == pytest.approx(0.6931, abs=1e-4)  # policy == reference
    assert report["after"]["val_margin"] > 0
    assert (tmp_path / "model" / "config.json").is_file()


def test_reward_model_learns_the_preference(tiny_dir, prefs, tmp_path):
    report = align(config(tiny_dir, prefs, tmp_path, method="reward"))
    assert report["after"]["val_reward_acc"] == 1.0 and report["after"]["val_loss"] < report["before"]["val_loss"]
    state = load_file(str(tmp_path / "reward_model.safetensors"))
    assert state["score.weight"].shape == (1, 32)


def test_kto_separates_desirable_from_undesirable(tiny_dir, prefs, tmp_path):
    train, val = prefs
    for src in (train, val):
        rows = [json.loads(line) for line in src.read_text().splitlines()]
        kto = [{"prompt": r["prompt"], "completion": r["chosen" if i % 2 else "rejected"], "label": bool(i % 2)}
               for i, r in enumerate(rows)] + [{"prompt": r["prompt"], "completion": r["chosen" if i % 2 == 0
                                                                                          else "rejected"],
                                                "label": i % 2 == 0} for i, r in enumerate(rows)]
        (tmp_path / f"{src.stem}_kto.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kto))
    report = align(config(tiny_dir, (tmp_path / "train_kto.jsonl", tmp_path / "val_kto.jsonl"), tmp_path / "out",
                          method="kto"))
    after = report["after"]
    assert after["val_reward_chosen"] > 0 > after["val_reward_rejected"]
    assert after["val_loss"] < report["before"]["val_loss"]


@pytest.mark.slow
def test_grpo_raises_a_trivially_learnable_reward(tiny_dir, tmp_path):
    """Reward: the share of letters and spaces in the completion (a random model emits many raw bytes)."""
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS))
    cfg = AlignConfig(method="grpo", model=str(tiny_dir), data=str(tmp_path / "prompts.jsonl"),
                      out_dir=str(tmp_path / "out"), r=4, alpha=8, max_steps=24, batch_size=4, group_size=4,
                      seq_len=64, lr=3e-2, warmup_steps=1, device="cpu", samples=0, max_new_tokens=8, plot=False)
    align(cfg, reward_fn=lambda rec, text: sum(c.isalpha() or c == " " for c in text) / max(len(text), 1))
    records = [json.loads(line) for line in (tmp_path / "out" / "train" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in records if "reward" in r]
    assert len(rewards) == 24
    assert sum(rewards[-6:]) / 6 > sum(rewards[:6]) / 6 + 0.1
    assert all(r["kl"] >= 0 for r in records if "kl" in r)


def test_resume_continues_bit_identically(tiny_dir, prefs, tmp_path):
    """Stopped after step 3 (its checkpoint is all a killed run leaves) and resumed to 6 == 6 steps straight.

    A constant schedule makes the learning rates independent of max_steps, so the short run's first
    steps are the straight run's.
    """
    kw = dict(method="dpo", schedule="constant", save_every=3)
    align(config(tiny_dir, prefs, tmp_path / "a", max_steps=6, **kw))
    align(config(tiny_dir, prefs, tmp_path / "b", max_steps=3, **kw))
    align(config(tiny_dir, prefs, tmp_path / "b", max_steps=6, resume=True, **kw))
    a, b = (load_file(str(tmp_path / d / "adapter" / "adapter_model.safetensors")) for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="--resume"):
        align(config(tiny_dir, prefs, tmp_path / "a", max_steps=6, **kw))


def test_cli_runs_a_method_and_reports_bad_data_in_one_line(tiny_dir, prefs, tmp_path, capsys):
    train, val = prefs
    args = ["align", "simpo", "--model", str(tiny_dir), "--data", str(train), "--val_data", str(val), "--r", "4",
            "--max_steps", "2", "--batch_size", "4", "--seq_len", "64", "--device", "cpu", "--samples", "0",
            "--plot", "false"]
    assert main(args + ["--out_dir", str(tmp_path / "ok")]) == 0
    assert json.loads((tmp_path / "ok" / "align.json").read_text())["config"]["method"] == "simpo"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello.", "rejected": "Hello."}) + "\n")
    assert main(args[:5] + [str(bad)] + args[6:] + ["--out_dir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"llmkit align: error: {bad}:1: field 'rejected': equals chosen: the pair says nothing"


@pytest.mark.slow
def test_distillation_into_a_preset_student_lowers_the_divergence(tiny_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"{a}. Thank you."}]}
            for q, a in zip(QUESTIONS, ANSWERS)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = AlignConfig(method="distill", model="nano", teacher=str(tiny_dir), data=str(tmp_path / "chat.jsonl"),
                      out_dir=str(tmp_path / "out"), peft="none", max_steps=8, batch_size=4, seq_len=64, lr=3e-3,
                      warmup_steps=1, device="cpu", samples=0, max_new_tokens=6, lmbda=0.5, beta=0.5, plot=False)
    report = align(cfg)
    assert report["after"]["val_loss"] < report["before"]["val_loss"]
    student = CausalLM.from_pretrained(tmp_path / "out" / "model")
    assert student.cfg.vocab_size == CausalLM.from_pretrained(tiny_dir).cfg.vocab_size
    with pytest.raises(ValueError, match="teacher"):
        AlignConfig(method="distill").validate()


def test_best_of_n_keeps_the_best_sample_under_a_trained_reward_model(tiny_dir, prefs, tmp_path):
    align(config(tiny_dir, prefs, tmp_path / "rm", method="reward", max_steps=4))
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS[:6]))
    cfg = AlignConfig(method="best-of-n", model=str(tiny_dir), data=str(tmp_path / "prompts.jsonl"),
                      reward_model=str(tmp_path / "rm"), out_dir=str(tmp_path / "bon"), group_size=3,
                      max_new_tokens=5, batch_size=4, seq_len=64, device="cpu")
    summary = align(cfg)
    assert summary["kept"] == 5 and summary["n"] == 3  # 6 prompts, one held out by the file split
    assert summary["mean_score_best"] >= summary["mean_score_first"]
    kept = [json.loads(line)["messages"] for line in (tmp_path / "bon" / "best_of_n.jsonl").read_text().splitlines()]
    assert [m[-1]["role"] for m in kept] == ["assistant"] * 5
    with pytest.raises(ValueError, match="field 'answer': is missing"):
        align(AlignConfig(**{**cfg.to_dict(), "reward_model": ""}))
