"""How much memory the KV pool gets: a size given as bytes or text ("2GiB"), or a share of what is free."""
from __future__ import annotations

import os
import re

import torch

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
CPU_SHARE = 0.25  # of available RAM: the weights, activations and the rest of the process need the remainder
CUDA_SHARE = 0.80  # of free GPU memory (vLLM's gpu_memory_utilization is 0.9 of the total, weights included)


def parse_memory(value: int | str) -> int:
    """Bytes from an int or a string such as ``"512MiB"``, ``"2GiB"``, ``"1.5GB"``."""
    if isinstance(value, int):
        size = value
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in UNITS:
            raise ValueError(f"kv_cache_memory: cannot read {value!r} as a size (e.g. 2GiB, 512MiB, 1000000)")
        size = int(float(m.group(1)) * UNITS[m.group(2).lower()])
    if size <= 0:
        raise ValueError(f"kv_cache_memory must be positive, got {value!r}")
    return size


def default_memory(device: torch.device) -> int:
    """The default pool size: ``CUDA_SHARE`` of free GPU memory, or ``CPU_SHARE`` of available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_SHARE)
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(available * CPU_SHARE)
