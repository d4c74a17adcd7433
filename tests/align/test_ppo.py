"""PPO (``llmkit align ppo``) on the tiny random model: the reward rises, the KL controller and value head
are part of the checkpoint so a resumed run is bit-identical, and the CLI takes a reward model."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llmkit.align import AlignConfig, align
from llmkit.align.rlhf import ValueHead, whiten
from llmkit.cli import main

from .conftest import QUESTIONS


def letters(rec, text: str) -> float:
    """A trivially learnable reward: the share of letters and spaces (a random model emits many raw bytes)."""
    return sum(c.isalpha() or c == " " for c in text) / max(len(text), 1)


def ppo_config(tiny_dir, tmp_path, out: str, **kw) -> AlignConfig:
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS * 4))
    base = dict(method="ppo", model=str(tiny_dir), data=str(tmp_path / "prompts.jsonl"), out_dir=str(tmp_path / out),
                r=4, alpha=8, batch_size=32, seq_len=64, lr=3e-2, warmup_steps=1, device="cpu", samples=0,
                max_new_tokens=8, plot=False, eval_batches=1)
    return AlignConfig(**{**base, **kw})


def _metrics(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_whiten_and_value_head():
    x, mask = torch.randn(3, 5), torch.tensor([[1.0] * 5, [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    w = whiten(x, mask)
    assert abs((w * mask).sum() / mask.sum()) < 1e-6 and torch.all(w[mask == 0] == 0)
    head = ValueHead(8, kl_coef=0.1)
    assert torch.all(head(torch.randn(2, 4, 8)) == 0)  # zero init: V = 0 before training
    assert head.state_dict()["kl_coef"].dtype == torch.float64


@pytest.mark.slow
def test_ppo_raises_a_trivially_learnable_reward(tiny_dir, tmp_path):
    """Two clipped steps per rollout of 32 prompts; lam = 1 (a sequence-level reward reaches every token)."""
    align(ppo_config(tiny_dir, tmp_path, "out", max_steps=40, ppo_epochs=2, lam=1.0), reward_fn=letters)
    records = [r for r in _metrics(tmp_path / "out" / "train" / "metrics.jsonl") if "reward" in r]
    rewards = [r["reward"] for r in records]
    assert len(rewards) == 40
    assert sum(rewards[-6:]) / 6 > sum(rewards[:6]) / 6 + 0.08
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts at the reference
    assert any(r["clip_frac"] > 0 for r in records)  # the second step on a rollout is off-policy and clipped
    assert all(r["kl_coef"] > 0 for r in records) and records[-1]["kl_coef"] != records[0]["kl_coef"]


def test_ppo_resume_continues_bit_identically(tiny_dir, tmp_path):
    """Stopped at step 2 (a checkpoint between rollouts) and resumed to 4 == 4 steps straight: LoRA, value head
    and the adaptive KL coefficient."""
    kw = dict(schedule="constant", save_every=2, ppo_epochs=2, max_new_tokens=4, batch_size=4)
    align(ppo_config(tiny_dir, tmp_path, "a", max_steps=4, **kw), reward_fn=letters)
    align(ppo_config(tiny_dir, tmp_path, "b", max_steps=2, **kw), reward_fn=letters)
    align(ppo_config(tiny_dir, tmp_path, "b", max_steps=4, resume=True, **kw), reward_fn=letters)
    a, b = (load_file(str(tmp_path / d / "adapter" / "adapter_model.safetensors")) for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ckpt = [load_file(str(next((tmp_path / d / "train" / "checkpoints").glob("step_*4")) / "model.safetensors"))
            for d in "ab"]
    heads = [{k: v for k, v in c.items() if k.startswith("value_head.")} for c in ckpt]
    assert set(heads[0]) == {"value_head.score.weight", "value_head.score.bias", "value_head.kl_coef"}
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    steps = [[r for r in _metrics(tmp_path / d / "train" / "metrics.jsonl") if "reward" in r] for d in "ab"]
    assert [r["kl_coef"] for r in steps[0]] == [r["kl_coef"] for r in steps[1]]
    with pytest.raises(ValueError, match="ppo_epochs"):
        ppo_config(tiny_dir, tmp_path, "c", max_steps=3, ppo_epochs=2).validate()


def test_cli_ppo_with_a_reward_model(tiny_dir, prefs, tmp_path):
    train, val = prefs
    common = ["--model", str(tiny_dir), "--r", "4", "--batch_size", "4", "--seq_len", "64", "--device", "cpu",
              "--samples", "0", "--plot", "false", "--eval_batches", "1"]
    assert main(["align", "reward", "--data", str(train), "--val_data", str(val), "--max_steps", "2",
                 "--out_dir", str(tmp_path / "rm"), *common]) == 0
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS))
    assert main(["align", "ppo", "--data", str(tmp_path / "prompts.jsonl"), "--reward-model", str(tmp_path / "rm"),
                 "--max_steps", "2", "--max_new_tokens", "4", "--out_dir", str(tmp_path / "ppo"), *common]) == 0
    report = json.loads((tmp_path / "ppo" / "align.json").read_text())
    assert report["config"]["method"] == "ppo" and "val_reward" in report["after"]
    assert (tmp_path / "ppo" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "ppo" / "report.md").is_file()
