"""A small pure-Python reader for R's serialisation format and lazy-load databases.

R packages ship their data sets as a *lazy-load database*: ``Rdata.rdx`` is an
index (a serialised named list ``variables`` of ``c(offset, length)`` pairs)
and ``Rdata.rdb`` holds each object as ``[4-byte big-endian length][zlib
stream]`` of one serialised R value. R writes the index with ``saveRDS``
(gzip); an index in the objects' length-prefixed zlib form is accepted too.

Only the XDR ("X\\n") format is read, and only the parts of the format that
data objects use: vectors (logical, integer, double, complex, character, list,
raw), pairlists and attributes, symbols and back-references, and the ALTREP
compact sequences (``1:n``) and wrappers R >= 3.5 writes. Closures,
environments, byte code and other ALTREP classes raise :class:`RFormatError`:
a data reader has no use for them, and a silently wrong answer would be worse
than a clear refusal.

Values come back as :class:`RValue` (``None`` for ``NULL``): a type name, a
Python list of elements (``None`` for ``NA``) and an attributes dict, which is
enough to walk data frames and named lists without an R installation.
Reference: R Internals, section 1.8 "Serialization Formats", and
``src/main/serialize.c``.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

NA_INTEGER = -(2**31)

# SEXP type codes (Rinternals.h) and the pseudo-types serialize.c adds.
_NILSXP, _SYMSXP, _LISTSXP, _CLOSXP, _ENVSXP, _PROMSXP, _LANGSXP = 0, 1, 2, 3, 4, 5, 6
_CHARSXP, _LGLSXP, _INTSXP, _REALSXP, _CPLXSXP, _STRSXP = 9, 10, 13, 14, 15, 16
_VECSXP, _EXPRSXP, _RAWSXP, _S4SXP = 19, 20, 24, 25
_ALTREP, _ATTRLIST, _ATTRLANG = 238, 239, 240
_EMPTYENV, _BASEENV, _GLOBALENV, _UNBOUND, _MISSINGARG, _BASENAMESPACE = 242, 241, 253, 252, 251, 250
_REFSXP, _NILVALUE = 255, 254
_IS_OBJECT, _HAS_ATTR, _HAS_TAG = 1 << 8, 1 << 9, 1 << 10
_LATIN1, _BYTES = 1 << 2, 1 << 1

_VECTOR_NAMES = {
    _LGLSXP: "logical", _INTSXP: "integer", _REALSXP: "double", _CPLXSXP: "complex",
    _STRSXP: "character", _VECSXP: "list", _EXPRSXP: "expression", _RAWSXP: "raw",
}
_PAIRLIST_NAMES = {_LISTSXP: "pairlist", _LANGSXP: "language", _ATTRLIST: "pairlist", _ATTRLANG: "language"}
_SINGLETONS = {_EMPTYENV: "emptyenv", _BASEENV: "baseenv", _GLOBALENV: "globalenv",
               _UNBOUND: "unbound", _MISSINGARG: "missing", _BASENAMESPACE: "basenamespace"}


class RFormatError(ValueError):
    """The bytes are not R serialisation data this reader understands."""


@dataclass
class RValue:
    """One R object: ``type`` is R's ``typeof`` name, ``value`` a list of elements.

    Symbols carry their name as a ``str`` value; ``NA`` elements are ``None``.
    """

    type: str
    value: Any
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str] | None:
        """The ``names`` attribute as a Python list, if any."""
        names = self.attributes.get("names")
        return None if names is None else names.value

    def as_dict(self) -> dict[str, Any]:
        """A named vector or list as ``{name: element}``."""
        if self.names is None:
            raise RFormatError(f"this {self.type} has no names")
        return dict(zip(self.names, self.value))


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos, self.refs = data, 0, []

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RFormatError(f"truncated R data: wanted {n} bytes at offset {self.pos}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def i32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.i32()
        if n == -1:  # long vector: two more ints, upper and lower 32 bits
            upper, lower = struct.unpack(">II", self.take(8))
            n = (upper << 32) | lower
        return n

    def item(self) -> Any:
        flags = self.i32()
        kind, levels = flags & 0xFF, flags >> 12
        has_attr, has_tag = bool(flags & _HAS_ATTR), bool(flags & _HAS_TAG)
        if kind == _NILVALUE:
            return None
        if kind == _REFSXP:
            index = flags >> 8 or self.i32()
            return self.refs[index - 1]
        if kind in _SINGLETONS:
            return RValue("environment", _SINGLETONS[kind])
        if kind == _SYMSXP:
            sym = RValue("symbol", self.item())  # the name arrives as a CHARSXP
            self.refs.append(sym)
            return sym
        if kind in _PAIRLIST_NAMES:
            return self.pairlist(kind, has_attr, has_tag)
        if kind == _CHARSXP:
            return self.charsxp(levels)
        if kind == _ALTREP:
            return self.altrep()
        if kind == _S4SXP:
            value = RValue("S4", None)
        elif kind in _VECTOR_NAMES:
            value = RValue(_VECTOR_NAMES[kind], self.vector(kind))
        else:
            raise RFormatError(f"unsupported R object type {kind} (closures, environments, byte code)")
        if has_attr:
            value.attributes = self.attributes(self.item())
        return value

    def pairlist(self, kind: int, has_attr: bool, has_tag: bool) -> RValue:
        # A pairlist is a chain of cells; read it iteratively so long lists do not recurse.
        out = RValue(_PAIRLIST_NAMES[kind], [])
        tags: list[str | None] = []
        while True:
            attrs = self.item() if has_attr else None
            tag = self.item() if has_tag else None
            out.value.append(self.item())
            tags.append(tag.value if isinstance(tag, RValue) else None)
            if attrs is not None and len(out.value) == 1:
                out.attributes = self.attributes(attrs)
            flags = self.i32()
            kind = flags & 0xFF
            if kind not in _PAIRLIST_NAMES:
                self.pos -= 4
                if self.item() is not None:
                    raise RFormatError("dotted pairlist (non-NULL tail) is not supported")
                break
            has_attr, has_tag = bool(flags & _HAS_ATTR), bool(flags & _HAS_TAG)
        if any(t is not None for t in tags):
            out.attributes["names"] = RValue("character", tags)
        return out

    def attributes(self, pairlist: RValue | None) -> dict[str, Any]:
        if pairlist is None:
            return {}
        return dict(zip(pairlist.names or [], pairlist.value))

    def charsxp(self, levels: int) -> str | None:
        n = self.i32()
        if n == -1:
            return None
        raw = self.take(n)
        return raw.decode("latin-1" if levels & (_LATIN1 | _BYTES) else "utf-8", errors="replace")

    def vector(self, kind: int) -> list[Any]:
        n = self.length()
        if kind in (_LGLSXP, _INTSXP):
            ints = struct.unpack(f">{n}i", self.take(4 * n))
            if kind == _LGLSXP:
                return [None if v == NA_INTEGER else bool(v) for v in ints]
            return [None if v == NA_INTEGER else v for v in ints]
        if kind == _REALSXP:
            return list(struct.unpack(f">{n}d", self.take(8 * n)))
        if kind == _CPLXSXP:
            parts = struct.unpack(f">{2 * n}d", self.take(16 * n))
            return [complex(parts[i], parts[i + 1]) for i in range(0, 2 * n, 2)]
        if kind == _RAWSXP:
            return list(self.take(n))
        return [self.item() for _ in range(n)]  # STRSXP, VECSXP, EXPRSXP

    def altrep(self) -> RValue:
        info, state, attrs = self.item(), self.item(), self.item()
        cls = info.value[0].value
        if cls in ("compact_intseq", "compact_realseq"):
            n, start, step = state.value
            seq = [start + i * step for i in range(int(n))]
            value = RValue("integer" if cls == "compact_intseq" else "double",
                           [int(v) for v in seq] if cls == "compact_intseq" else seq)
        elif cls.startswith("wrap_"):
            value = state.value[0]  # pairlist(wrapped vector, metadata)
        else:  # e.g. deferred_string: R formats its numbers itself, and a near miss would be silent
            raise RFormatError(f"unsupported ALTREP class {cls!r}")
        value.attributes = self.attributes(attrs)
        return value


def unserialize(data: bytes) -> RValue | None:
    """Decode one uncompressed R serialisation stream (XDR format, version 2 or 3).

    Args:
        data: bytes starting with ``b"X\\n"``.

    Returns:
        The top-level R object (``None`` for ``NULL``).
    """
    if data[:2] != b"X\n":
        raise RFormatError(f"not XDR R serialisation data (starts with {data[:2]!r})")
    reader = _Reader(data)
    reader.pos = 2
    version = reader.i32()
    if version not in (2, 3):
        raise RFormatError(f"unsupported R serialisation version {version}")
    reader.i32(), reader.i32()  # writer's R version, minimal reader version
    if version == 3:
        reader.take(reader.i32())  # native encoding name, e.g. "UTF-8"
    return reader.item()


def decompress_object(blob: bytes) -> bytes:
    """Decompress one lazy-load DB record: 4-byte big-endian length, then the stream.

    zlib is R's default; ``compress = 2`` / ``3`` records carry a type byte
    (``'1'`` zlib, ``'2'`` bzip2, ``'Z'`` xz, ``'0'`` stored) after the length,
    which a bare zlib stream (first byte 0x78) cannot be confused with.
    """
    if blob[:2] == b"\x1f\x8b":  # the index as saveRDS writes it
        return gzip.decompress(blob)
    size = struct.unpack(">I", blob[:4])[0]
    body = blob[4:]
    if body[:1] in (b"1", b"2", b"Z", b"0"):
        kind, body = body[:1], body[1:]
        out = {b"1": zlib.decompress, b"2": bz2.decompress, b"Z": lzma.decompress, b"0": bytes}[kind](body)
    else:
        out = zlib.decompress(body)
    if len(out) != size:
        raise RFormatError(f"lazy-load record inflated to {len(out)} bytes, header says {size}")
    return out


def read_lazyload_db(rdx: bytes, rdb: bytes) -> dict[str, RValue | None]:
    """Read every object of an R lazy-load database (``Rdata.rdx`` + ``Rdata.rdb``).

    Args:
        rdx: contents of the ``.rdx`` index file.
        rdb: contents of the ``.rdb`` data file.

    Returns:
        ``{object name: value}`` in the index's order.
    """
    index = unserialize(decompress_object(rdx))
    if not isinstance(index, RValue) or index.names is None or "variables" not in index.names:
        raise RFormatError("the .rdx index is not a list with a 'variables' entry")
    out = {}
    for name, span in index.as_dict()["variables"].as_dict().items():
        offset, size = (int(v) for v in span.value)
        out[name] = unserialize(decompress_object(rdb[offset:offset + size]))
    return out
