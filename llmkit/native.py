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


def fingerprint(cpuinfo: str) -> str:
    """8 hex digits naming the feature flags in the text of /proc/cpuinfo (x86 ``flags``, Arm ``Features``),
    in any order; the machine and processor names when it has none."""
    flags = next((line.split(":", 1)[1] for line in cpuinfo.splitlines() if line.startswith(("flags", "Features"))),
                 None)
    key = " ".join(sorted(flags.split())) if flags is not None else f"{platform.machine()} {platform.processor()}"
    return hashlib.sha1(key.encode()).hexdigest()[:8]


@functools.cache
def cpu_fingerprint() -> str:
    """:func:`fingerprint` of this machine's CPU."""
    try:
        return fingerprint(Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux
        return fingerprint("")


def build_name(prefix: str, *parts: str) -> str:
    """``prefix`` + the torch version + the CPU fingerprint (+ ``parts``), as a valid extension name."""
    return "_".join([prefix, re.sub(r"\W", "_", torch.__version__), cpu_fingerprint(), *parts])
