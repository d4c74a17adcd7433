"""Stop-and-resume reaches bit-identical weights; Ctrl-C finishes the step and saves."""
import json
import os
import signal

import torch

from llmkit.train import Data, Trainer

from .helpers import RandomBatches, params, tiny_cfg

DROPOUT = dict(resid_dropout=0.1, attn_dropout=0.1)


def _cfg(tmp_path, name):
    # grad_accum=2 so the interruption falls inside the loader's stream, dropout so RNG restore matters,
    # evaluation between steps to show it does not disturb either
    return tiny_cfg(tmp_path / name, max_steps=6, grad_accum=2, model_overrides=DROPOUT, eval_every=2,
                    eval_batches=2, save_every=4, log_every=1)


def _val():
    return RandomBatches(seed=99)


def test_sigint_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    straight = Trainer(_cfg(tmp_path, "a"), data=Data(RandomBatches(), val=_val))
    assert not straight.fit().interrupted

    # Ctrl-C arrives while the loader produces a micro-batch of step 3 (batches 4, 5)
    sigint = {5: lambda: os.kill(os.getpid(), signal.SIGINT)}
    first = Trainer(_cfg(tmp_path, "b"), data=Data(RandomBatches(on_step=sigint), val=_val))
    result = first.fit()
    assert result.interrupted and result.step == 3
    out = tmp_path / "b" / "run"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000003"]
    assert not (out / "model").exists()  # the final model is written only when the run completes

    resumed = Trainer(_cfg(tmp_path, "b"), data=Data(RandomBatches(), val=_val), resume=True)
    assert resumed.step == 3
    assert resumed.fit().step == 6
    a, b = params(straight.model), params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4, 6]
    straight_records = (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["loss"] for r in straight_records if "val_loss" not in r] == \
        [r["loss"] for r in records if "loss" in r]


def test_resume_from_a_periodic_checkpoint_after_a_crash(tmp_path):
    """A run killed after its step-4 checkpoint (simulated: later files removed) redoes steps 5-6 identically."""
    straight = Trainer(_cfg(tmp_path, "a"), data=Data(RandomBatches(), val=_val))
    straight.fit()
    out = tmp_path / "a" / "run"
    for step_dir in (out / "checkpoints").glob("step_000006"):
        for f in step_dir.iterdir():
            f.unlink()
        step_dir.rmdir()
    resumed = Trainer(_cfg(tmp_path, "a"), data=Data(RandomBatches(), val=_val), resume=True)
    assert resumed.step == 4
    resumed.fit()
    a, b = params(straight.model), params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_raising_max_steps_continues_a_finished_run(tmp_path):
    cfg = tiny_cfg(tmp_path, max_steps=3, schedule="constant")
    Trainer(cfg, data=Data(RandomBatches())).fit()
    longer = cfg.__class__.from_dict({**cfg.to_dict(), "max_steps": 5})
    assert Trainer(longer, data=Data(RandomBatches()), resume=True).fit().step == 5


def test_resume_with_the_real_packed_loader_is_bit_identical(tmp_path, byte_shards):
    def cfg(name, steps):
        return tiny_cfg(tmp_path / name, data=str(byte_shards), max_steps=steps, schedule="constant",
                        grad_accum=2, model_overrides=DROPOUT, eval_every=2, eval_batches=2)

    straight = Trainer(cfg("a", 5))
    straight.fit()
    Trainer(cfg("b", 3)).fit()
    resumed = Trainer(cfg("b", 5), resume=True)
    resumed.fit()
    a, b = params(straight.model), params(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
