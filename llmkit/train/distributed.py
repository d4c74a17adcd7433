"""Data-parallel training under ``torchrun``: DDP or FSDP2, with rank-aware logging and checkpoints.

Launching
---------
The trainer reads the environment ``torchrun`` sets (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``...); without it, it runs as one process.
The backend is NCCL when training on CUDA (one GPU per process, ``cuda:LOCAL_RANK``)
and gloo on CPU. ``llmkit`` is a console script, so torchrun starts it with
``--no-python``::

    # one node, 8 GPUs
    torchrun --standalone --nproc_per_node 8 --no-python llmkit train recipes/tiny.yaml --parallel fsdp

    # two nodes of 8 GPUs: run on every node, same rendezvous endpoint and id
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST0:29500 \\
        --rdzv_id run1 --no-python llmkit train recipes/tiny.yaml --parallel fsdp

    # CPU, two processes (what the tests run)
    torchrun --standalone --nproc_per_node 2 --no-python llmkit train recipes/tiny.yaml --device cpu

``batch_size`` is per rank, so the global batch is
``batch_size * grad_accum * world_size`` sequences. The data loader gives
rank ``r`` the ``r``-th slice of each global batch, so 2 processes with
batch ``b`` see exactly the sequences 1 process sees with ``grad_accum=2``;
the loss is normalised by the target count of the whole global batch, so the
two runs take the same optimizer steps (up to float summation order).

Rank 0 alone prints progress, writes ``metrics.jsonl``, plots, and writes
checkpoints; every rank reads checkpoints on resume, so ``out_dir`` must be
on a filesystem all nodes share. Each rank's RNG state is gathered into the
checkpoint and restored on resume (the world size must not change).

DDP, FSDP and the ZeRO stages
-----------------------------
Training with AdamW in fp32 master weights holds 16 bytes per parameter:
4 for the weight, 4 for its gradient, 8 for the two Adam moments (Rajbhandari
et al. 2020, "ZeRO", count the same 16 for bf16 weights plus fp32 copies).

- ``parallel: ddp`` replicates everything: each of N ranks holds all 16 bytes
  and gradients are all-reduced (bucketed, overlapped with backward).
- **ZeRO-1** shards the optimizer state: 4 + 4 + 8/N bytes. Each rank updates
  only its slice of the weights and then all-gathers them. (PyTorch:
  ``ZeroRedundancyOptimizer`` around a DDP model; FSDP2 has no ZeRO-1 mode.)
- **ZeRO-2** also shards gradients: 4 + 12/N. The all-reduce becomes a
  reduce-scatter, so each rank receives only the gradient slice it updates.
  (FSDP2: ``fully_shard(..., reshard_after_forward=False)``, which keeps each
  block's gathered weights from forward to backward.)
- **ZeRO-3** shards the weights too: 16/N. ``parallel: fsdp`` is this:
  ``fully_shard`` on every decoder block and on the root. Before a block runs
  (forward, and again in backward) its weights are all-gathered and freed
  right after, so a rank never holds more than one block's full weights;
  gradients are reduce-scattered; the optimizer only ever sees its shards
  (``DTensor`` parameters). The price is the extra all-gather in backward,
  which FSDP overlaps with compute by prefetching the next block.

Checkpoints are written in full (unsharded) form either way: FSDP's shards
are gathered to rank 0 with ``torch.distributed.checkpoint.state_dict``
(``full_state_dict=True, cpu_offload=True``), and on resume every rank loads
the full dict and keeps its own shard. This is simple and keeps every
checkpoint an ordinary HF model directory, at the cost of needing the full
model in rank 0's CPU memory while saving.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA if present else CPU; under torchrun, ``cuda`` means ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
    return device


def init(device: str) -> Dist:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, local_rank, world_size, dev)


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, parallel: str, d: Dist) -> nn.Module:
    """The module to run forward/backward through: DDP around ``model``, or ``model`` sharded in place by FSDP2.

    Call after moving ``model`` to ``d.device`` (and after activation checkpointing), before building
    the optimizer: FSDP2 replaces the parameters with sharded ``DTensor`` ones.
    """
    if not d.enabled:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(d.device.type, (d.world_size,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def grad_sync(module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Context for one micro-batch's backward: skip the gradient reduction unless ``sync`` (the last one)."""
    if hasattr(module, "no_sync"):  # DDP
        return contextlib.nullcontext() if sync else module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum ``t`` over ranks, in place; returns it."""
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank if ``flag`` is true on any (e.g. one rank caught Ctrl-C)."""
    t = torch.tensor([float(flag)], device=d.device)
    return bool(all_reduce_sum(t, d).item() > 0)


def gather_objects(obj: Any, d: Dist) -> list[Any]:
    """Every rank's ``obj``, in rank order (a collective: all ranks must call it)."""
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded CPU (model, optimizer) state dicts keyed by parameter name; complete on rank 0.

    A collective under FSDP (the shards are gathered): every rank must call it.
    """
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                          optim_state: dict) -> None:
    """Load full (unsharded) state dicts on every rank; FSDP keeps each rank's shard."""
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True))
