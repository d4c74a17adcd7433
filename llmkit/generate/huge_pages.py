"""Model weights on transparent huge pages, for decode steps that stream them from memory on the CPU.

A batch-1 decode step reads every weight once (SmolLM2-135M in bf16: 270 MB per
token), so it runs at the memory's bandwidth, and with 4 KiB pages every 4 KiB
of that stream is a TLB miss that the page walker has to resolve before the
hardware prefetcher may cross into the next page. Linux backs 2 MiB-aligned
anonymous memory with 2 MiB pages when asked (``madvise(MADV_HUGEPAGE)``, the
"madvise" THP mode most distributions ship), but torch's allocator does not ask
(unless ``THP_MEM_ALLOC_ENABLE=1`` is set before torch starts), and weights
loaded from a file are not anonymous memory at all.

:func:`move_to_huge_pages` copies a module's parameters into one such mapping
and points each parameter at its copy (``param.data``), so every holder of the
``Parameter`` sees the move and the values are bit for bit the same. Measured
on a 2-core Zen 4, SmolLM2-135M bf16, the engine's compiled batch-1 step: 12.0
against 13.0 ms (median of 8 alternating generations in one process, faster in 7).
Where the kernel cannot give huge pages (THP off, not Linux) nothing moves.
"""
from __future__ import annotations

import mmap
from pathlib import Path

import torch
from torch import nn

HUGE_PAGE = 2 << 20
ALIGN = 64  # each tensor starts on a cache line
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages_available() -> bool:
    """The kernel gives anonymous memory huge pages on request (Linux, THP mode "always" or "madvise")."""
    try:
        mode = THP_MODE.read_text()
    except OSError:
        return False
    return hasattr(mmap, "MADV_HUGEPAGE") and "[never]" not in mode


def move_to_huge_pages(module: nn.Module) -> int:
    """Copy ``module``'s CPU parameters that own their whole storage into one huge-page mapping.

    Parameters that share storage with another tensor (a view, a slice of a flat buffer) stay where
    they are, since moving one would break the sharing. Tied parameters are one ``Parameter`` and
    move once.

    Returns:
        The bytes moved (0 when huge pages are not available).
    """
    if not huge_pages_available():
        return 0
    params = [p for p in module.parameters() if _movable(p)]
    sizes = [-(-p.numel() * p.element_size() // ALIGN) * ALIGN for p in params]
    total = sum(sizes)
    if total == 0:
        return 0
    region = mmap.mmap(-1, total + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        region.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # a kernel without THP support for this mapping
        region.close()
        return 0
    buffer = torch.frombuffer(region, dtype=torch.uint8)  # keeps ``region`` alive as long as any view of it
    offset = -buffer.data_ptr() % HUGE_PAGE  # the first 2 MiB boundary: huge pages are aligned ones
    with torch.no_grad():
        for p, size in zip(params, sizes):
            nbytes = p.numel() * p.element_size()
            home = buffer[offset:offset + nbytes].view(p.dtype).view(p.shape)
            home.copy_(p)
            p.data = home
            offset += size
    return total


def _movable(p: torch.Tensor) -> bool:
    return (p.device.type == "cpu" and p.layout == torch.strided and p.is_contiguous() and p.numel() > 0
            and p.storage_offset() == 0 and p.untyped_storage().nbytes() == p.numel() * p.element_size()
            and type(p.data) is torch.Tensor)
