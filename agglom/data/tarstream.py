"""A streaming reader of tar archives, for shard reading: plain ustar/GNU/pax parsed here, the rest via tarfile.

Why not :mod:`tarfile`: a WebDataset shard is a stream of small members, each behind a 512-byte header (and, as
Python's tar writers make them, a pax header too); parsing those headers through ``tarfile.TarInfo`` cost about
1.3 ms per sample, more than decoding and augmenting a 64-px image. This reader parses the fields a shard reader
needs (name, size, type, pax ``path``/``size``, GNU long names) straight from the header bytes and checks each
header's checksum as tarfile does. A gzip/bzip2/xz archive is decompressed here and then read the same way;
anything else (an old v7 header, an unknown format) goes to :mod:`tarfile`'s stream reader.

Hostile input is refused, never followed (bounds in :mod:`agglom.data.limits`): a member's size may not be
negative, exceed :data:`~agglom.data.limits.MAX_MEMBER_BYTES` (a pax header or GNU long name:
:data:`~agglom.data.limits.MAX_HEADER_BYTES`), nor, when the stream is a seekable file, what is left of it; a pax
record must be ``<decimal length> <key>=<value>\\n`` inside its header (a length of 0 would never advance); names
and pax values must be UTF-8; a compressed archive may not expand past
:data:`~agglom.data.limits.MAX_EXPANSION` times the bytes read. Links, devices and directories carry no data
(tarfile's rule), so a link's declared size is not read as the next header. The checks are a few comparisons per
header, ~0.5 us (6-8% of this parser's time on a 2,000-sample shard); the checksum's byte sum, most of that time,
is taken 5x faster than ``sum()`` (:func:`_byte_sum`), so the parser as a whole reads such a shard in 0.72x the
time it took without the checks.

Errors are :class:`tarfile.ReadError` (a bad header, a truncated member, a broken bound), so callers handle both
readers alike.
"""
from __future__ import annotations

import importlib
import lzma
import os
import tarfile
import zlib
from typing import BinaryIO, Dict, Iterator, Optional, Tuple

from agglom.data.limits import EXPANSION_FLOOR, MAX_EXPANSION, MAX_HEADER_BYTES, MAX_MEMBER_BYTES

BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")  # regular file, old-style regular file, contiguous file
_NO_DATA = frozenset((b"1", b"2", b"3", b"4", b"5", b"6"))  # hard/symbolic link, char/block device, directory, fifo
# pax (member, global), GNU long name, GNU long link name: bounded tighter than members
_CAPS = {b"x": MAX_HEADER_BYTES, b"g": MAX_HEADER_BYTES, b"L": MAX_HEADER_BYTES, b"K": MAX_HEADER_BYTES}
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "lzma"))
Member = Tuple[str, bytes, int, int, bytes]  # (name, type flag, data offset, size, data)


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


def _byte_sum(block: bytes) -> int:
    """``sum(block)`` of a 512-byte block, 5x faster: adler32's low half is 1 + the byte sum modulo 65521, exact
    for 256 bytes (at most 65280), so two halves give the sum. The checksum is most of the parser's time."""
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


def _checksum_ok(header: bytes) -> bool:
    """tarfile's rule: the stored checksum is the header's byte sum with the checksum field as spaces, bytes read
    unsigned (POSIX) or signed (some old tars)."""
    try:
        stored = _octal(header[148:156])
    except tarfile.ReadError:
        return False
    unsigned = 8 * 32 + _byte_sum(header) - sum(header[148:156])  # the field counted as eight spaces
    if stored == unsigned:
        return True
    rest = header[:148] + header[156:]
    return stored == unsigned - 256 * sum(1 for b in rest if b > 127)


def is_plain_tar(block: bytes) -> bool:
    """Whether ``block`` (an archive's first 512 bytes) is a ustar/GNU/pax header this reader parses."""
    return len(block) == BLOCK and block[257:262] == b"ustar" and _checksum_ok(block)


def _utf8(raw: bytes, what: str, at: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise tarfile.ReadError(f"{what} at byte {at} is not UTF-8: {raw[:60]!r}") from None


def _pax(data: bytes, at: int) -> Dict[str, str]:
    """``<len> <key>=<value>\\n`` records of a pax extended header (``at``: its offset, for messages). A record that
    breaks the format (a length that is 0, negative, not a number or past the header, no ``=``) is an error, so
    every record read advances."""
    out, pos, end = {}, 0, len(data)
    while pos < end:
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            if not data[pos:].strip(b"\0"):  # NUL padding after the last record
                break
            raise tarfile.ReadError(f"bad pax record at byte {at + pos}: {data[pos:pos + 24]!r} does not start "
                                    "with a decimal length")
        stop = pos + int(digits)
        if stop > end or stop <= space + 1 or data[stop - 1] != 0x0A:
            raise tarfile.ReadError(f"bad pax record at byte {at + pos}: length {int(digits)} does not end a record "
                                    f"inside the {end}-byte header")
        key, eq, value = data[space + 1: stop - 1].partition(b"=")
        if not eq or not key:
            raise tarfile.ReadError(f"bad pax record at byte {at + pos}: no key=value in {data[pos:stop][:60]!r}")
        try:
            out[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise tarfile.ReadError(f"bad pax record at byte {at + pos}: not UTF-8: {data[pos:stop][:60]!r}") from None
        pos = stop
    return out


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise tarfile.ReadError(f"unexpected end of data in {what}")
    return data


def _pax_size(text: str, pos: int) -> int:
    if not (text.isascii() and text.isdigit()):
        raise tarfile.ReadError(f"bad pax size {text[:40]!r} for the tar member at byte {pos}")
    return int(text)


def _size_error(size: int, kind: bytes, pos: int, left: Optional[int]) -> tarfile.ReadError:
    cap = _CAPS.get(kind, MAX_MEMBER_BYTES)
    if 0 <= size <= cap:
        return tarfile.ReadError(f"unexpected end of data: the tar member at byte {pos} declares {size} bytes, but "
                                 f"only {max(0, (left or 0) - pos - BLOCK)} follow its header (truncated or damaged)")
    what = "a pax/long-name header" if kind in _CAPS else "a member"
    return tarfile.ReadError(f"the tar member at byte {pos} declares {size} bytes: refused ({what} may hold 0 to "
                             f"{cap} bytes, agglom.data.limits)")


def _walk(f: BinaryIO, block: bytes, keep_data: bool, left: Optional[int] = None) -> Iterator[Member]:
    """``(name, type flag, data offset, size, data)`` per member, pax and GNU long-name headers applied; the data
    is read when ``keep_data`` (else seeked over, for a file: ``data`` is then empty). Offsets are counted here,
    so a pipe works too when the data is read. ``left``: the bytes of the archive from ``block`` on, when known."""
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
        text = pending.get("size")  # the bounds: one comparison each (see the module docstring)
        size = 0 if kind in _NO_DATA else _octal(block[124:136]) if text is None else _pax_size(text, pos)
        if size < 0 or size > _CAPS.get(kind, MAX_MEMBER_BYTES) or (left is not None and size > left - pos - BLOCK):
            raise _size_error(size, kind, pos, left)
        start, pad = pos + BLOCK, -size % BLOCK
        data = b""
        if keep_data or kind in (b"x", b"L"):
            data = _read_exact(f, size, "a tar member") if size else b""
            if pad:
                _read_exact(f, pad, "a tar member's padding")
        else:
            f.seek(size + pad, 1)
        if kind == b"x":
            pending.update(_pax(data, start))
        elif kind == b"L":
            pending["path"] = _utf8(data.split(b"\0", 1)[0], "a GNU long name", start)
        elif kind not in b"gK":  # a member (global pax headers and GNU long link names are not)
            yield pending.get("path") or _header_name(block, pos), kind, start, size, data
            pending = {}
        pos = start + size + pad
        block = f.read(BLOCK)


def _remaining(f: BinaryIO) -> Optional[int]:
    """The bytes left in ``f`` from its position on when it is a seekable file; None for a pipe."""
    try:
        if not f.seekable():
            return None
        here = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(here)
    except (AttributeError, OSError, ValueError):
        return None
    return end - here


def index(path: str, file_offsets: bool = False) -> Dict[str, Tuple[int, int]]:
    """``{member name: (data offset, size)}`` of the regular files of the tar file at ``path``, reading only the
    headers (the data is seeked over): what :class:`~agglom.cache.reader.CachedTeacher` looks features up by.
    A compressed archive's offsets are into its decompressed bytes; ``file_offsets`` refuses such an archive
    (``tarfile.ReadError``) for a caller that reads the file at those offsets."""
    with open(path, "rb") as f:
        left = os.fstat(f.fileno()).st_size
        first = f.read(BLOCK)
        if file_offsets and not is_plain_tar(first) and first.strip(b"\0"):
            raise tarfile.ReadError(f"{path} is not an uncompressed ustar/pax tar archive, so its member offsets "
                                    "are not file offsets")
        return {name: (start, size) for name, kind, start, size, _ in _archive(f, first, False, left)
                if kind in _REGULAR}


def _header_name(block: bytes, pos: int) -> str:
    name = block[0:100].split(b"\0", 1)[0]
    prefix = block[345:500].split(b"\0", 1)[0] if block[257:263] == b"ustar\0" else b""
    try:
        return prefix.decode("utf-8") + "/" + name.decode("utf-8") if prefix else name.decode("utf-8")
    except UnicodeDecodeError:
        raise tarfile.ReadError(f"the member name at byte {pos} is not UTF-8: {(prefix + name)[:60]!r}") from None


class Prefixed:
    """A read-only stream that returns ``prefix`` first, then the rest of ``stream`` (what was read to decide which
    reader to use is handed on); ``consumed`` counts the bytes it has returned."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self.prefix, self.stream, self.consumed = prefix, stream, 0

    def read(self, n: int = -1) -> bytes:
        if not self.prefix:
            out = self.stream.read(n)
        elif n is None or n < 0:
            out, self.prefix = self.prefix + self.stream.read(), b""
        else:
            head, self.prefix = self.prefix[:n], self.prefix[n:]
            out = head + (self.stream.read(n - len(head)) if len(head) < n else b"")
        self.consumed += len(out)
        return out


class _Inflated:
    """The decompressed bytes of a gzip/bzip2/xz stream, read forward in chunks of at most 1 MiB; a damaged
    stream, or one expanding past ``MAX_EXPANSION`` times the compressed bytes read (beyond ``EXPANSION_FLOOR``),
    raises ``tarfile.ReadError`` before the excess is held."""

    _ERRORS = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError)

    def __init__(self, raw: Prefixed, module: str) -> None:
        self.raw, self.module, self.out = raw, module, 0
        self.inner = importlib.import_module(module).open(raw, "rb")

    def read(self, n: int = -1) -> bytes:
        parts, want = [], n if n is not None and n >= 0 else MAX_MEMBER_BYTES + 1
        while want > 0:
            try:
                chunk = self.inner.read(min(want, 1 << 20))
            except self._ERRORS as e:
                raise tarfile.ReadError(f"{self.module}: cannot decompress the archive: {e}") from None
            if not chunk:
                break
            self.out += len(chunk)
            if self.out > max(EXPANSION_FLOOR, MAX_EXPANSION * self.raw.consumed):
                raise tarfile.ReadError(f"{self.module}: {self.raw.consumed} compressed bytes expand to over "
                                        f"{self.out} (over {MAX_EXPANSION}x, past the first {EXPANSION_FLOOR}: a "
                                        "decompression bomb?)")
            parts.append(chunk)
            want -= len(chunk)
        return b"".join(parts)


def _tarfile_walk(stream: BinaryIO, keep_data: bool) -> Iterator[Member]:
    """tarfile's stream reader for what this parser leaves to it (old v7 headers, ...), members bounded alike."""
    tar = tarfile.open(fileobj=stream, mode="r|")
    for info in tar:
        if not 0 <= info.size <= MAX_MEMBER_BYTES:
            raise tarfile.ReadError(f"the tar member at byte {info.offset} declares {info.size} bytes: refused (a "
                                    f"member may hold 0 to {MAX_MEMBER_BYTES} bytes, agglom.data.limits)")
        _utf8(info.name.encode("utf-8", "surrogateescape"), "the member name", info.offset)
        data = tar.extractfile(info).read() if keep_data and info.isreg() else b""
        yield info.name, (_REGULAR[0] if info.isreg() else info.type), info.offset_data, info.size, data
        tar.members = []


def _archive(stream: BinaryIO, first: bytes, keep_data: bool, left: Optional[int], inflated: bool = False
             ) -> Iterator[Member]:
    """The members of any archive whose first block is ``first``: this parser for plain tar, decompressed first
    (once) for gzip/bzip2/xz, tarfile otherwise. A function, not a generator: the plain walk is returned as it is,
    with no delegating layer per member."""
    if is_plain_tar(first):
        return _walk(stream, first, keep_data, left)
    module = next((m for magic, m in _COMPRESSED if first.startswith(magic)), None)
    if module is not None and not inflated:
        inner = _Inflated(Prefixed(first, stream), module)
        return _archive(inner, inner.read(BLOCK), True, None, inflated=True)  # read forward: no seeking
    return _tarfile_walk(Prefixed(first, stream), keep_data)


def members(stream: BinaryIO) -> Iterator[Tuple[str, bool, bytes]]:
    """``(name, is_regular_file, data)`` of a tar stream: this module's reader for plain ustar/GNU/pax archives and
    for gzip/bzip2/xz-compressed ones, :mod:`tarfile` (v7 and anything else) otherwise."""
    left = _remaining(stream)
    first = stream.read(BLOCK)
    for name, kind, _, _, data in _archive(stream, first, True, left):
        yield (name.rstrip("/") if kind == b"5" else name), kind in _REGULAR, data


__all__ = ["members", "index", "is_plain_tar", "Prefixed", "BLOCK"]
