"""The ar/.deb and tarball readers on archives built in the test."""
from __future__ import annotations

import io
import tarfile

import pytest

from llmkit.data.archive import deb_files, read_ar, tar_files


def ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}".encode() + b"`\n"
    return header + data + (b"\n" if len(data) % 2 else b"")


def make_tar(files: dict[str, bytes], mode: str = "w:xz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        folder = tarfile.TarInfo("./usr/share/books")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./usr/share/books/link.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "a.txt"
        tar.addfile(link)
    return buf.getvalue()


FILES = {
    "./usr/share/books/a.txt": b"odd-length text",
    "./usr/share/books/sub/b.txt": b"even",
    "./usr/share/bookshelf/c.txt": b"a sibling folder with a common prefix",
}


def test_read_ar_members_and_padding():
    archive = b"!<arch>\n" + ar_member("debian-binary", b"2.0\n") + ar_member("odd/", b"abc") + ar_member("x", b"yz")
    assert read_ar(archive) == {"debian-binary": b"2.0\n", "odd": b"abc", "x": b"yz"}
    with pytest.raises(ValueError, match="not an ar archive"):
        read_ar(b"PK\x03\x04")


def test_deb_files_reads_data_tar_under_a_folder(tmp_path):
    deb = tmp_path / "pkg.deb"
    deb.write_bytes(b"!<arch>\n" + ar_member("debian-binary", b"2.0\n")
                    + ar_member("control.tar.xz", make_tar({"./control": b"Package: x\n"}))
                    + ar_member("data.tar.xz", make_tar(FILES)))
    # links and folders are skipped; "books" does not match "bookshelf"
    assert deb_files(deb, "usr/share/books") == {"a.txt": b"odd-length text", "sub/b.txt": b"even"}
    assert len(deb_files(deb)) == 3


def test_tar_files_gzip_and_zstd_refusal(tmp_path):
    assert tar_files(make_tar(FILES, "w:gz"), "usr/share/bookshelf") == {"c.txt": FILES["./usr/share/bookshelf/c.txt"]}
    deb = tmp_path / "zstd.deb"
    deb.write_bytes(b"!<arch>\n" + ar_member("data.tar.zst", b"\x28\xb5\x2f\xfd"))
    with pytest.raises(ValueError, match="zstd"):
        deb_files(deb)
