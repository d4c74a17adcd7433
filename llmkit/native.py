"""llmkit's C++ kernels: built once per machine with torch's extension builder, under names that fit the CPU.

The kernels are compiled with ``-march=native``, so a built library is only
valid on CPUs with the same instruction sets. torch caches a build under its
name (in ``~/.cache/torch_extensions``), which may be shared between hosts
(a home directory on network storage, a container image built on another
machine): the name therefore carries the torch version and a fingerprint of
the CPU's feature flags, and a host with other flags builds its own copy
instead of loading one that would die on an illegal instruction.

:func:`build` compiles and loads one library of operators, or warns and
returns False (no compiler, no ninja, no OpenMP), so that its callers can keep
their torch fallback.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import platform
import re
import warnings
from pathlib import Path

import torch

log = logging.getLogger(__name__)


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


def build(prefix: str, sources: list[Path], cflags: list[str], what: str, fallback: str, *parts: str) -> bool:
    """Build (once per machine; cached by torch under :func:`build_name`) and load the operator library of ``sources``.

    Args:
        prefix, parts: the library's name (see :func:`build_name`).
        sources: its C++ files.
        cflags: extra compiler flags (``-march=native`` makes the build specific to this CPU).
        what: the library, as the log and the warning name it ("the CPU argmax kernel").
        fallback: what the caller does without it, for the warning ("using torch.argmax").
    Returns:
        True once loaded; False, with a RuntimeWarning, if the build failed.
    """
    from torch.utils.cpp_extension import load

    log.info("building %s (once; cached by torch)", what)
    try:
        load(build_name(prefix, *parts), [str(s) for s in sources], is_python_module=False, extra_cflags=cflags)
    except Exception as e:  # noqa: BLE001 - no compiler, no ninja, no OpenMP: the caller's fallback
        warnings.warn(f"{what} could not be built ({type(e).__name__}: {e}); {fallback}", RuntimeWarning,
                      stacklevel=3)
        return False
    return True
