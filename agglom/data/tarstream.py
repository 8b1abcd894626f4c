"""A streaming reader of plain (uncompressed) tar archives, for shard reading.

Why not :mod:`tarfile`: a WebDataset shard is a stream of small members, each behind a 512-byte header (and, as
Python's tar writers make them, a pax header too); parsing those headers through ``tarfile.TarInfo`` cost about
1.3 ms per sample, more than decoding and augmenting a 64-px image. This reader parses the fields a shard reader
needs (name, size, type, pax ``path``/``size``, GNU long names) straight from the header bytes and checks each
header's checksum as tarfile does. Anything it does not handle (a compressed archive, an old or unknown header
format) is left to :mod:`tarfile` by the caller: :func:`is_plain_tar` says which.

Errors are :class:`tarfile.ReadError` (a bad header, a truncated member), so callers handle both readers alike.
"""
from __future__ import annotations

import tarfile
from typing import BinaryIO, Dict, Iterator, Optional, Tuple

BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")  # regular file, old-style regular file, contiguous file


def _octal(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 (high bit set) for large values."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[:1] == b"\xff" else value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise tarfile.ReadError(f"bad number field in tar header: {field!r}") from None


def _checksum_ok(header: bytes) -> bool:
    """tarfile's rule: the stored checksum is the header's byte sum with the checksum field as spaces, bytes read
    unsigned (POSIX) or signed (some old tars)."""
    try:
        stored = _octal(header[148:156])
    except tarfile.ReadError:
        return False
    unsigned = 8 * 32 + sum(header) - sum(header[148:156])  # the field counted as eight spaces
    if stored == unsigned:
        return True
    rest = header[:148] + header[156:]
    return stored == unsigned - 256 * sum(1 for b in rest if b > 127)


def is_plain_tar(block: bytes) -> bool:
    """Whether ``block`` (an archive's first 512 bytes) is a ustar/GNU/pax header this reader parses."""
    return len(block) == BLOCK and block[257:262] == b"ustar" and _checksum_ok(block)


def _pax(data: bytes) -> Dict[str, str]:
    """``<len> <key>=<value>\\n`` records of a pax extended header."""
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1: pos + length - 1].partition(b"=")
        out[key.decode("utf-8")] = value.decode("utf-8")
        pos += length
    return out


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise tarfile.ReadError(f"unexpected end of data in {what}")
    return data


def _walk(f: BinaryIO, block: bytes, keep_data: bool) -> Iterator[Tuple[str, bytes, int, int, bytes]]:
    """``(name, type flag, data offset, size, data)`` per member, pax and GNU long-name headers applied; the data
    is read when ``keep_data`` (else seeked over, for a file: ``data`` is then empty). Offsets are counted here,
    so a pipe works too when the data is read."""
    pending: Dict[str, str] = {}  # pax / GNU long-name fields for the next member
    pos = 0  # where `block` starts in the archive
    while block:
        if len(block) < BLOCK:
            raise tarfile.ReadError("unexpected end of data in a tar header")
        if not block[0] and block.count(0) == BLOCK:  # an end-of-archive block (a header starts with its name)
            return
        if not _checksum_ok(block):
            raise tarfile.ReadError(f"bad checksum in the tar header at byte {pos}")
        kind = block[156:157]
        size = int(pending.get("size", _octal(block[124:136])))
        start, pad = pos + BLOCK, -size % BLOCK
        data = b""
        if keep_data or kind in (b"x", b"L"):
            data = _read_exact(f, size, "a tar member") if size else b""
            if pad:
                _read_exact(f, pad, "a tar member's padding")
        else:
            f.seek(size + pad, 1)
        pos = start + size + pad
        if kind == b"x":
            pending.update(_pax(data))
        elif kind == b"L":
            pending["path"] = data.split(b"\0", 1)[0].decode("utf-8")
        elif kind not in b"gK":  # a member (global pax headers and GNU long link names are not)
            yield pending.get("path") or _header_name(block), kind, start, size, data
            pending = {}
        block = f.read(BLOCK)


def iter_members(f: BinaryIO, first: Optional[bytes] = None) -> Iterator[Tuple[str, bool, bytes]]:
    """``(name, is_regular_file, data)`` for each member of the tar stream ``f`` (``first``: its first header
    block, already read by the caller), up to the end-of-archive marker or the end of the stream."""
    for name, kind, _, _, data in _walk(f, first if first is not None else f.read(BLOCK), keep_data=True):
        yield (name.rstrip("/") if kind == b"5" else name), kind in _REGULAR, data  # tarfile's dir names


def index(path: str) -> Dict[str, Tuple[int, int]]:
    """``{member name: (data offset, size)}`` of the regular files of the tar file at ``path``, reading only the
    headers (the data is seeked over): what :class:`~agglom.cache.reader.CachedTeacher` looks features up by.
    Archives this module does not parse go to :mod:`tarfile`."""
    with open(path, "rb") as f:
        block = f.read(BLOCK)
        if not is_plain_tar(block):
            with tarfile.open(path) as tar:
                return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isreg()}
        return {name: (start, size) for name, kind, start, size, _ in _walk(f, block, keep_data=False)
                if kind in _REGULAR}


def _header_name(block: bytes) -> str:
    name = block[0:100].split(b"\0", 1)[0].decode("utf-8")
    prefix = block[345:500].split(b"\0", 1)[0] if block[257:263] == b"ustar\0" else b""
    return prefix.decode("utf-8") + "/" + name if prefix else name


class Prefixed:
    """A read-only stream that returns ``prefix`` first, then the rest of ``stream`` (what was read to decide which
    reader to use is handed on to :mod:`tarfile`)."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self.prefix, self.stream = prefix, stream

    def read(self, n: int = -1) -> bytes:
        if not self.prefix:
            return self.stream.read(n)
        if n is None or n < 0:
            head, self.prefix = self.prefix, b""
            return head + self.stream.read()
        head, self.prefix = self.prefix[:n], self.prefix[n:]
        return head + (self.stream.read(n - len(head)) if len(head) < n else b"")


def members(stream: BinaryIO) -> Iterator[Tuple[str, bool, bytes]]:
    """``(name, is_regular_file, data)`` of a tar stream: this module's reader for plain ustar/GNU/pax archives,
    :mod:`tarfile` (``r|*``: compressed, v7, anything else) otherwise."""
    first = stream.read(BLOCK)
    if is_plain_tar(first):
        yield from iter_members(stream, first)
        return
    tar = tarfile.open(fileobj=Prefixed(first, stream), mode="r|*")
    for info in tar:
        yield info.name, info.isreg(), tar.extractfile(info).read() if info.isreg() else b""
        tar.members = []


__all__ = ["members", "iter_members", "index", "is_plain_tar", "Prefixed", "BLOCK"]
