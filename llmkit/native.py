"""Names for llmkit's C++ kernels as torch's extension builder caches them.

The kernels are compiled with ``-march=native``, so a built library is only
valid on CPUs with the same instruction sets. torch caches a build under its
name (in ``~/.cache/torch_extensions``), which may be shared between hosts
(a home directory on network storage, a container image built on another
machine): the name therefore carries the torch version and a fingerprint of
the CPU's feature flags, and a host with other flags builds its own copy
instead of loading one that would die on an illegal instruction.
"""
from __future__ import annotations

import functools
import hashlib
import platform
import re
from pathlib import Path

import torch


@functools.cache
def cpu_fingerprint() -> str:
    """8 hex digits naming this CPU's feature flags (the ``flags`` line of /proc/cpuinfo; elsewhere the
    machine and processor names)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next(line.split(":", 1)[1] for line in text.splitlines() if line.startswith(("flags", "Features")))
        key = " ".join(sorted(flags.split()))
    except (OSError, StopIteration):
        key = f"{platform.machine()} {platform.processor()}"
    return hashlib.sha1(key.encode()).hexdigest()[:8]


def build_name(prefix: str, *parts: str) -> str:
    """``prefix`` + the torch version + the CPU fingerprint (+ ``parts``), as a valid extension name."""
    return "_".join([prefix, re.sub(r"\W", "_", torch.__version__), cpu_fingerprint(), *parts])
