"""`PeakMemory`: the peak bytes of live tensor storages created inside a block, on any device.

CUDA has ``torch.cuda.max_memory_allocated``; the CPU has no allocator
statistics, and the process RSS includes the Python heap and freed-but-cached
pages. This dispatch mode sees every tensor an operator returns, counts its
storage once, and uncounts it when the storage is freed (a weakref
finaliser): activations, saved-for-backward tensors, gradients, caches and
communication buffers created inside the block, the same on every device.
Outputs that share storage with an input of the same operator (views such
as a weight's transpose, in-place results) are not new memory and are not
counted, so weights and anything else made before the block stay out. Used
to show that sequence parallelism cuts activation memory per rank, and to
compare the long-context methods' memory.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakMemory(TorchDispatchMode):
    """``with PeakMemory() as mem: ...`` then ``mem.peak``: the most bytes of storages created inside alive at once."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _free(self, key: int, n: int) -> None:
        self.live -= n
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in self.seen and key not in inputs:
                    self.seen.add(key)
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out
