"""Reading files out of .deb packages and tarballs without unpacking to disk.

A Debian package is a Unix ``ar`` archive (``!<arch>\\n`` then 60-byte member
headers) holding ``debian-binary``, ``control.tar.*`` and ``data.tar.*``; the
files a package installs live in ``data.tar``. Parsing ``ar`` takes a dozen
lines, so llmkit needs neither ``dpkg`` nor root to read Debian-packaged text.
``data.tar`` may be xz, gzip or bzip2 (what :mod:`tarfile` reads); zstd, which
some Ubuntu releases use, is refused with a clear message rather than a
dependency.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

_AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60


def read_ar(data: bytes) -> dict[str, bytes]:
    """Split a Unix ``ar`` archive into ``{member name: contents}``.

    Args:
        data: the whole archive.

    Returns:
        Members in archive order; GNU-style trailing ``/`` is dropped from names.
    """
    if not data.startswith(_AR_MAGIC):
        raise ValueError("not an ar archive (missing !<arch> magic)")
    members, pos = {}, len(_AR_MAGIC)
    while pos + _AR_HEADER <= len(data):
        header = data[pos:pos + _AR_HEADER]
        if header[58:60] != b"`\n":
            raise ValueError(f"corrupt ar member header at offset {pos}")
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        start = pos + _AR_HEADER
        members[name] = data[start:start + size]
        pos = start + size + (size % 2)  # members are padded to an even offset
    return members


def tar_files(tar_bytes: bytes, under: str = "") -> dict[str, bytes]:
    """Regular files of a (compressed) tarball whose path starts with ``under``.

    Args:
        tar_bytes: a tar archive, optionally gzip/bzip2/xz compressed.
        under: folder to keep, without a leading ``./`` (e.g. ``"usr/share/games"``); ``""`` keeps all.

    Returns:
        ``{path relative to under: contents}``, sorted by path; links and folders are skipped.
    """
    prefix = under.strip("/") + "/" if under.strip("/") else ""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:*") as tar:
        for member in tar.getmembers():
            path = member.name.removeprefix("./")
            if member.isfile() and path.startswith(prefix):
                out[path[len(prefix):]] = tar.extractfile(member).read()
    return dict(sorted(out.items()))


def deb_files(deb: Path, under: str = "") -> dict[str, bytes]:
    """Files a Debian package would install under ``under``, read from its ``data.tar``.

    Args:
        deb: path of the ``.deb``.
        under: install path prefix, e.g. ``"usr/share/games/fortunes"``.

    Returns:
        ``{path relative to under: contents}``.
    """
    members = read_ar(Path(deb).read_bytes())
    data = [name for name in members if name.startswith("data.tar")]
    if not data:
        raise ValueError(f"{deb} has no data.tar member")
    if data[0].endswith(".zst"):
        raise ValueError(f"{deb} uses zstd compression, which Python's tarfile cannot read")
    return tar_files(members[data[0]], under)
