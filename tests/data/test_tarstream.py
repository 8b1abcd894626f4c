"""agglom.data.tarstream: the shard reader's tar header parser gives what tarfile gives, member for member, on the
formats shards are written in, hands the rest to tarfile, and fails on damage as tarfile does."""
import gzip
import io
import tarfile

import pytest

from agglom.data.tarstream import BLOCK, Prefixed, is_plain_tar, members

NAMES = [("a/" * 60 + "long.png", b"x" * 1000), ("k.json", b"{}"), ("z" * 99 + ".txt", b""),
         ("\u00fc-\u00f1.png", b"abc"), ("n/" + "y" * 150 + ".npy", b"\x93NUMPY" + b"\0" * 700)]


def _tar(fmt: int, entries=NAMES) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, data in entries:
            if fmt == tarfile.USTAR_FORMAT and len(name.split("/")[-1]) > 100:
                continue  # ustar cannot hold a base name over 100 characters
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1.5  # a float mtime: pax headers as Python's shard writers make them
            t.addfile(info, io.BytesIO(data))
        d = tarfile.TarInfo("dir")
        d.type = tarfile.DIRTYPE
        t.addfile(d)
    return buf.getvalue()


def _tarfile_members(raw: bytes):
    t = tarfile.open(fileobj=io.BytesIO(raw), mode="r|*")
    out = []
    for info in t:
        out.append((info.name, info.isreg(), t.extractfile(info).read() if info.isreg() else b""))
    return out


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_equal_tarfiles(fmt):
    raw = _tar(fmt)
    assert is_plain_tar(raw[:BLOCK])
    got = list(members(io.BytesIO(raw)))
    assert got == _tarfile_members(raw)
    assert ("dir", False, b"") in got and ("k.json", True, b"{}") in got


def test_webdataset_shards_read_the_same():
    import webdataset as wds

    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False) as w:
        for i in range(5):
            w.write({"__key__": f"s{i:03d}", "png": bytes([i]) * (100 + i), "json": b'{"label": 1}'})
    raw = buf.getvalue()
    assert list(members(io.BytesIO(raw))) == _tarfile_members(raw)


def test_compressed_and_old_archives_go_to_tarfile():
    raw = _tar(tarfile.PAX_FORMAT)
    packed = gzip.compress(raw)
    assert not is_plain_tar(packed[:BLOCK])
    assert list(members(io.BytesIO(packed))) == _tarfile_members(raw)
    v7 = bytearray(_tar(tarfile.GNU_FORMAT, [("k.json", b"{}")]))
    v7[257:265] = b"\0" * 8  # no ustar magic: an old v7 header, for tarfile (checksum now wrong too: tarfile refuses)
    assert not is_plain_tar(bytes(v7[:BLOCK]))


def test_damage_fails_like_tarfile():
    raw = _tar(tarfile.PAX_FORMAT)
    cut = raw[: BLOCK * 4 + 10]  # inside the first member's data
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        list(members(io.BytesIO(cut)))
    bad = bytearray(raw)
    second = BLOCK * 3 + 1024  # past the first member (pax header + header + 2 data blocks): its pax header
    bad[second + 10] ^= 0xFF
    with pytest.raises(tarfile.ReadError, match="bad checksum"):
        list(members(io.BytesIO(bytes(bad))))
    at_boundary = raw[: BLOCK * 3 + 1024]  # cut between members: a clean end, as tarfile reads it
    assert [n for n, _, _ in members(io.BytesIO(at_boundary))] == [NAMES[0][0]]


def test_prefixed_stream_returns_the_prefix_first():
    s = Prefixed(b"abc", io.BytesIO(b"defgh"))
    assert s.read(2) == b"ab" and s.read(3) == b"cde" and s.read() == b"fgh" and s.read(4) == b""


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_index_gives_tarfiles_offsets(tmp_path, fmt):
    from agglom.data.tarstream import index

    path = tmp_path / "a.tar"
    path.write_bytes(_tar(fmt))
    with tarfile.open(path) as t:
        want = {m.name: (m.offset_data, m.size) for m in t.getmembers() if m.isreg()}
    got = index(str(path))
    assert got == want and len(got) >= 3
    raw = path.read_bytes()
    for name, (offset, size) in got.items():  # the offsets point at the members' bytes
        assert raw[offset: offset + size] == dict(NAMES)[name]
    gz = tmp_path / "a.tar.gz"
    gz.write_bytes(gzip.compress(raw))
    assert set(index(str(gz))) == set(want)  # tarfile's own index (offsets into the decompressed stream)


def test_checksum_byte_sum_is_exact():
    """The adler32-based byte sum equals sum() on every block, the all-0xFF extreme included."""
    import os

    from agglom.data.tarstream import _byte_sum

    for block in [os.urandom(BLOCK) for _ in range(200)] + [b"\xff" * BLOCK, b"\0" * BLOCK, b"\x7f" * BLOCK]:
        assert _byte_sum(block) == sum(block)


@pytest.mark.parametrize("compress", ["bz2", "lzma"])
def test_bzip2_and_xz_archives_read_like_tarfile(compress):
    import importlib

    raw = _tar(tarfile.PAX_FORMAT)
    packed = importlib.import_module(compress).compress(raw)
    assert list(members(io.BytesIO(packed))) == _tarfile_members(raw)
