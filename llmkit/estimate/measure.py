"""Measure tensor memory on any device, CPU included, by counting live tensor storages.

``torch.cuda.max_memory_allocated`` exists only on CUDA, so the estimates are
checked with a counting allocator instead: a ``TorchDispatchMode`` sees every
tensor an aten op returns (forward, backward and optimizer alike), records its
storage's ``nbytes`` once, and a ``weakref.finalize`` on the storage subtracts
them when the storage dies. Storages are counted, not tensors, so views and
in-place results are free, and a tensor that autograd keeps for backward stays
counted until backward releases it. The peak is the largest sum seen.

This counts what the program asks for: it misses the caching allocator's
rounding and fragmentation and kernel workspaces that never become tensors.
The bookkeeping is not locked: use it from one thread (CPU autograd runs
backward in the calling thread).
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorCounter(TorchDispatchMode):
    """Context manager tracking live and peak bytes of tensor storages.

    Example::

        counter = LiveTensorCounter()
        counter.track(*model.parameters())  # created before the mode: add them by hand
        with counter:
            loss = model(x).sum(); loss.backward(); opt.step()
        print(counter.peak)
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0  # bytes of storages alive now
        self.peak = 0  # most bytes alive at once since construction or reset_peak()
        self._sizes: dict[int, int] = {}

    def track(self, *tensors: torch.Tensor) -> None:
        """Count the storages of ``tensors`` (each at most once) until they are freed."""
        for t in tensors:
            if t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = id(storage)  # storage PyObjects are preserved while the storage lives
            if key in self._sizes:
                continue
            self._sizes[key] = storage.nbytes()
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key)

    def reset_peak(self) -> None:
        """Start a new peak from what is alive now."""
        self.peak = self.live

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.track(*(t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)))
        return out
