"""Ring attention and Ulysses over gloo: output and gradients equal single-process attention; memory per rank falls;
a whole model run sequence-parallel has the single-process loss gradients, and so does a `Trainer` step.

Each world size is one ``torch.multiprocessing.spawn`` of CPU processes on
127.0.0.1; every rank checks its own chunk against full attention computed
locally from the same seed, and reports the peak bytes of tensors alive
during its sequence-parallel forward + backward. Then each runs one step of a
``Trainer(sequence_parallel=...)`` on batches every rank reads alike (B=2,
T=14, so 4 ranks pad to 16; a quarter of the targets -100; two
micro-batches): its loss, the gradients the optimizer sees (after DDP's
reduction) and its validation metrics must equal a one-process Trainer's.
"""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import torch.nn.functional as F

from llmkit import CausalLM, ModelConfig
from llmkit.model.attention import attend
from llmkit.parallel import PeakMemory, ring_attention, sequence_parallel, shard_sequence, ulysses_attention
from llmkit.train import Trainer, TrainConfig
from llmkit.train.data import Data

B, H, HKV, T, D = 1, 4, 2, 32, 8


def _inputs():
    g = torch.Generator().manual_seed(0)
    q, k, v, w = (torch.randn(B, h, T, D, generator=g) for h in (H, HKV, HKV, H))
    return q, k, v, w


SMALL = ModelConfig(vocab_size=61, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=16,
                    init_std=0.2)


class FixedBatches:
    """The same seeded ``(x, y)`` batches on every rank, a pure function of the step."""

    def __init__(self, seed: int = 0):
        self.seed, self.step = seed, 0

    def __next__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.step)
        self.step += 1
        x, y = torch.randint(0, 61, (2, 2, 14), generator=g)
        y[torch.rand(y.shape, generator=g) < 0.25] = -100
        return x, y

    def state_dict(self):
        return {"step": self.step}


def _one_step(out_dir: str, method: str) -> dict:
    """Loss, gradients and validation metrics of one step of a Trainer on :class:`FixedBatches`."""
    cfg = TrainConfig(out_dir=out_dir, sequence_parallel=method, batch_size=2, grad_accum=2, device="cpu",
                      plot=False, max_steps=1, warmup_steps=0)
    torch.manual_seed(0)
    val = lambda: [next(FixedBatches(seed=7)) for _ in range(2)]  # noqa: E731
    trainer = Trainer(cfg, model=CausalLM(SMALL), data=Data(FixedBatches(), val))
    grads = {}

    def capture() -> torch.Tensor:
        grads.update({n: p.grad.clone() for n, p in trainer.model.named_parameters()})
        return apply()

    apply, trainer._apply_gradients = trainer._apply_gradients, capture
    record = trainer.train_step()
    result = {"loss": record["loss"], "grads": grads, "eval": trainer.evaluate()}
    trainer.module = trainer.model
    return result


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        q, k, v, w = _inputs()
        chunk = slice(rank * T // world, (rank + 1) * T // world)
        peaks = {}
        for name, fn in (("ring", ring_attention), ("ulysses", ulysses_attention)):
            for causal in (True, False):
                full = [x.clone().requires_grad_() for x in (q, k, v)]
                mask = None if causal else torch.ones(1, 1, T, T, dtype=torch.bool)
                ref = attend(*full, mask, D ** -0.5, "eager")
                (ref * w).sum().backward()
                local = [x[:, :, chunk].clone().requires_grad_() for x in (q, k, v)]
                with PeakMemory() as mem:
                    out = fn(*local, causal=causal)
                    (out * w[:, :, chunk]).sum().backward()
                peaks[name] = mem.peak
                torch.testing.assert_close(out, ref[:, :, chunk], atol=1e-5, rtol=1e-5)
                for mine, whole in zip(local, full):
                    torch.testing.assert_close(mine.grad, whole.grad[:, :, chunk], atol=1e-5, rtol=1e-5)
        _check_model(rank, world)
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))  # the Trainer joins the group already set up
        steps = {method: _one_step(f"{out_dir}/{method}", method) for method in ("ring", "ulysses")}
        if rank == world - 1:  # the rank holding the padded end
            torch.save(steps, f"{out_dir}/steps.pt")
            with open(f"{out_dir}/peaks.json", "w") as f:
                json.dump(peaks, f)
    finally:
        dist.destroy_process_group()


def _loss(model: CausalLM, ids: torch.Tensor, targets: torch.Tensor, **kwargs) -> torch.Tensor:
    return F.cross_entropy(model(ids, **kwargs).transpose(1, 2), targets, ignore_index=-100, reduction="sum")


def _check_model(rank: int, world: int) -> None:
    """A whole CausalLM: summed chunk losses and all-reduced weight gradients equal the single-process ones."""
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=37, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48,
                                 max_seq_len=T, init_std=0.2))
    ids = torch.randint(0, 37, (2, T), generator=torch.Generator().manual_seed(1))
    targets = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)
    full_loss = _loss(model, ids, targets)
    full_loss.backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for method in ("ring", "ulysses"):
        local, positions = shard_sequence(ids)
        with sequence_parallel(model, method):
            loss = _loss(model, local, shard_sequence(targets)[0], position_ids=positions)
        loss.backward()
        loss = loss.detach()
        dist.all_reduce(loss)
        torch.testing.assert_close(loss, full_loss.detach(), atol=1e-4, rtol=1e-5)
        for name, p in model.named_parameters():
            dist.all_reduce(p.grad)
            torch.testing.assert_close(p.grad, full[name], atol=1e-4, rtol=1e-4, msg=f"{method} {name}")
        model.zero_grad()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_equal_to_one_process_and_memory_falls_with_world_size(tmp_path):
    ref = _one_step(str(tmp_path / "one"), "none")
    peaks = {}
    for world in (2, 4):
        out = tmp_path / str(world)
        mp.spawn(_worker, args=(world, _free_port(), str(out)), nprocs=world, join=True)
        peaks[world] = json.loads((out / "peaks.json").read_text())
        for method, got in torch.load(out / "steps.pt", weights_only=True).items():
            where = f"{method} on {world} ranks"
            assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5), where
            assert got["eval"]["val_tokens"] == ref["eval"]["val_tokens"], where
            assert got["eval"]["val_loss"] == pytest.approx(ref["eval"]["val_loss"], rel=1e-5), where
            assert got["grads"].keys() == ref["grads"].keys()
            for name, g in ref["grads"].items():
                torch.testing.assert_close(got["grads"][name], g, atol=1e-5, rtol=1e-4, msg=f"{where}: {name}")
    q, k, v, w = _inputs()
    with PeakMemory() as mem:
        full = [x.clone().requires_grad_() for x in (q, k, v)]
        (attend(*full, None, D ** -0.5, "eager") * w).sum().backward()
    for name in ("ring", "ulysses"):
        assert peaks[4][name] < peaks[2][name] < mem.peak, (name, peaks, mem.peak)


def test_bad_shapes_are_refused():
    q = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="bad shapes"):
        ring_attention(q, torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("method, world, overrides, message", [
    ("ulysses", 3, {}, "3 ranks to divide the model's 4 attention heads"),
    ("ring", 2, {"sliding_window": 8}, "not sliding_window"),
    ("zigzag", 2, {}, "method must be one of"),
])
def test_unsupported_setups_are_refused(method, world, overrides, message):
    from llmkit.parallel import check_sequence_parallel

    cfg = ModelConfig(vocab_size=37, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=48, **overrides)
    with pytest.raises(ValueError, match=message):
        check_sequence_parallel(cfg, method, world)


def test_train_config_refuses_compile_with_sequence_parallel():
    with pytest.raises(ValueError, match="sequence_parallel.*compile"):
        TrainConfig(sequence_parallel="ring", compile=True).validate()
