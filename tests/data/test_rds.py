"""The R serialisation reader on hand-built XDR bytes, written here item by item."""
from __future__ import annotations

import gzip
import lzma
import struct
import zlib

import pytest

from llmkit.data.rds import RFormatError, decompress_object, read_lazyload_db, unserialize

NIL = struct.pack(">i", 254)


def i32(*values: int) -> bytes:
    return struct.pack(f">{len(values)}i", *values)


def flags(kind: int, attr: bool = False, tag: bool = False, levels: int = 0) -> bytes:
    return i32(kind | (attr << 9) | (tag << 10) | (levels << 12))


def charsxp(s: str | None) -> bytes:
    if s is None:
        return flags(9) + i32(-1)
    raw = s.encode()
    return flags(9, levels=1 << 3) + i32(len(raw)) + raw  # UTF8_MASK


def symbol(name: str) -> bytes:
    return flags(1) + charsxp(name)


def ref(index: int) -> bytes:
    return i32((index << 8) | 255)


def strsxp(items: list[str | None], attrs: bytes = b"") -> bytes:
    return flags(16, attr=bool(attrs)) + i32(len(items)) + b"".join(map(charsxp, items)) + attrs


def pairlist(cells: list[tuple[bytes, bytes]]) -> bytes:
    """Tagged cells (tag item bytes, value item bytes), NULL-terminated."""
    return b"".join(flags(2, tag=True) + tag + value for tag, value in cells) + NIL


def header() -> bytes:
    return b"X\n" + i32(3, 0x040201, 0x030500, 5) + b"UTF-8"


def sample_bytes() -> bytes:
    """list(chr = c("x", NA), int = c(1L, NA, 3L), dbl = c(1.5, -2), lgl = c(TRUE, NA, FALSE),
    nested = list(k = c(a = 7L)), null = NULL, seq = 1:3) as R writes it: ``seq`` as an ALTREP
    compact_intseq; attributes follow a vector's elements, so the first ``names`` symbol is the
    one inside ``nested`` and the later ones are back-references to it."""
    inner = (flags(19, attr=True) + i32(1)
             + flags(13, attr=True) + i32(1, 7) + pairlist([(symbol("names"), strsxp(["a"]))])
             + pairlist([(ref(1), strsxp(["k"]))]))
    elements = [
        strsxp(["x", None]),
        flags(13) + i32(3, 1, -(2**31), 3),
        flags(14) + i32(2) + struct.pack(">2d", 1.5, -2.0),
        flags(10) + i32(3, 1, -(2**31), 0),
        inner,
        NIL,
        flags(238) + flags(2) + symbol("compact_intseq") + flags(2) + symbol("base") + flags(2) + flags(13)
        + i32(1, 13) + NIL + flags(14) + i32(3) + struct.pack(">3d", 3, 1, 1) + NIL,
    ]
    names = strsxp(["chr", "int", "dbl", "lgl", "nested", "null", "seq"])
    return (header() + flags(19, attr=True) + i32(len(elements)) + b"".join(elements)
            + pairlist([(ref(1), names)]))


def test_unserialize_vectors_na_attributes_refs_altrep():
    value = unserialize(sample_bytes())
    assert value.type == "list"
    d = value.as_dict()
    assert d["chr"].type == "character" and d["chr"].value == ["x", None]
    assert d["int"].value == [1, None, 3]
    assert d["dbl"].value == [1.5, -2.0]
    assert d["lgl"].value == [True, None, False]
    assert d["null"] is None
    assert d["seq"].type == "integer" and d["seq"].value == [1, 2, 3]
    inner = d["nested"].as_dict()["k"]
    assert inner.value == [7] and inner.names == ["a"]


def test_unserialize_rejects_non_xdr_and_closures():
    with pytest.raises(RFormatError, match="not XDR"):
        unserialize(b"A\n" + i32(3))
    closure = header() + flags(3) + NIL
    with pytest.raises(RFormatError, match="unsupported R object type 3"):
        unserialize(closure)


def record(payload: bytes) -> bytes:
    """One lazy-load DB record: 4-byte big-endian length, then zlib."""
    return struct.pack(">I", len(payload)) + zlib.compress(payload)


def build_db(objects: dict[str, bytes], gzip_index: bool) -> tuple[bytes, bytes]:
    rdb, spans = b"", []
    for payload in objects.values():
        rec = record(payload)
        spans.append((len(rdb), len(rec)))
        rdb += rec
    variables = (flags(19, attr=True) + i32(len(spans))
                 + b"".join(flags(13) + i32(2, off, size) for off, size in spans)
                 + pairlist([(symbol("names"), strsxp(list(objects)))]))
    index = (header() + flags(19, attr=True) + i32(3) + variables + flags(19) + i32(0) + flags(10) + i32(1, 1)
             + pairlist([(ref(1), strsxp(["variables", "references", "compressed"]))]))
    rdx = gzip.compress(index) if gzip_index else record(index)
    return rdx, rdb


@pytest.mark.parametrize("gzip_index", [True, False])
def test_read_lazyload_db(gzip_index):
    objects = {"lines": header() + strsxp(["CHAPTER 1", "", "It is a truth."]), "other": sample_bytes()}
    rdx, rdb = build_db(objects, gzip_index)
    db = read_lazyload_db(rdx, rdb)
    assert list(db) == ["lines", "other"]
    assert db["lines"].value == ["CHAPTER 1", "", "It is a truth."]
    assert db["other"].as_dict()["int"].value == [1, None, 3]


def test_unserialize_altrep_wrapper():
    wrapped = (flags(238) + flags(2) + symbol("wrap_real") + flags(2) + symbol("base") + flags(2) + flags(13)
               + i32(1, 14) + NIL  # info: pairlist(class, package, type)
               + flags(2) + flags(14) + i32(2) + struct.pack(">2d", 0.5, 2.5)  # state: pairlist(x, meta)
               + flags(2) + flags(13) + i32(2, 0, 0) + NIL + NIL)  # meta; no attributes
    value = unserialize(header() + wrapped)
    assert value.type == "double" and value.value == [0.5, 2.5]


def test_decompress_object_checks_length_and_reads_typed_records():
    blob = record(b"abc")
    assert decompress_object(blob) == b"abc"
    assert decompress_object(struct.pack(">I", 3) + b"Z" + lzma.compress(b"xyz")) == b"xyz"
    assert decompress_object(struct.pack(">I", 3) + b"0xyz") == b"xyz"
    with pytest.raises(RFormatError, match="header says 4"):
        decompress_object(struct.pack(">I", 4) + blob[4:])
