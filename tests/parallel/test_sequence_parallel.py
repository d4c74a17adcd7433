"""Ring attention and Ulysses over gloo: output and gradients equal single-process attention; memory per rank falls;
a whole model run sequence-parallel has the single-process loss gradients.

Each world size is one ``torch.multiprocessing.spawn`` of CPU processes on
127.0.0.1; every rank checks its own chunk against full attention computed
locally from the same seed, and reports the peak bytes of tensors alive
during its sequence-parallel forward + backward.
"""
from __future__ import annotations

import json
import socket
import weakref

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

import torch.nn.functional as F

from llmkit import CausalLM, ModelConfig
from llmkit.model.attention import attend
from llmkit.parallel import ring_attention, sequence_parallel, shard_sequence, ulysses_attention

B, H, HKV, T, D = 1, 4, 2, 32, 8


class PeakMemory(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the mode and still alive (CPU-friendly, exact)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _free(self, key: int, n: int) -> None:
        self.live -= n
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in self.seen:
                    self.seen.add(key)
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def _inputs():
    g = torch.Generator().manual_seed(0)
    q, k, v, w = (torch.randn(B, h, T, D, generator=g) for h in (H, HKV, HKV, H))
    return q, k, v, w


def _worker(rank: int, world: int, port: int, out_path: str) -> None:
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
        if rank == 0:
            with open(out_path, "w") as f:
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
def test_equal_to_full_attention_and_memory_falls_with_world_size(tmp_path):
    peaks = {}
    for world in (2, 4):
        path = tmp_path / f"peak{world}.json"
        mp.spawn(_worker, args=(world, _free_port(), str(path)), nprocs=world, join=True)
        peaks[world] = json.loads(path.read_text())
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
