"""Hostile shards against every reader: no file hangs a reader, exhausts memory or ends in a traceback; each bad
shard or sample is skipped and counted by reason, with a detail naming the cause (agglom/data/limits.py).

Tar-level damage (pax records, sizes, names, compression bombs) is put between two good samples of a shard: every
reader keeps the sample before it and counts the shard ``bad_tar``. Sample-level damage (image and json bombs, keys
that name paths) is one sample among good ones: ``bad_image``, ``bad_json``, ``bad_key``. Every read runs under a
guard (a thread joined with a timeout, or a subprocess with one) so a hang fails the test instead of stalling CI;
the guard is not a speed assertion.
"""
from __future__ import annotations

import bz2
import functools
import gzip
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import threading
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest
from PIL import Image

from agglom.config.load import load_config
from agglom.config.schema import Recipe
from agglom.data.counts import SkipCounts
from agglom.data.readers import eval_loader, train_loader
from agglom.data.shards import read_shard
from agglom.data.tarstream import index, members
from agglom.data.writer import DatasetWriter

ROOT = Path(__file__).resolve().parents[2]
GUARD_S = 60  # a hang fails the test after this long (the cases take well under a second)
END = b"\0" * 1024


# --------------------------------------------------------------------------- building shards by hand
def _png(value: int = 3, size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _meta(label: int = 1) -> bytes:
    return json.dumps({"label": label, "attrs": {"site": "A"}}).encode()


def _header(name: Any, size: int, kind: bytes = b"0", size_field: bytes = b"") -> bytes:
    """A ustar header (its size field replaced by ``size_field`` when given), checksum recomputed."""
    info = tarfile.TarInfo(name if isinstance(name, str) else name.decode("utf-8", "surrogateescape"))
    info.size, info.type = size, kind
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
    if size_field:
        block[124:136] = size_field
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _member(name: str, data: bytes, kind: bytes = b"0") -> bytes:
    return _header(name, len(data), kind) + data + b"\0" * (-len(data) % 512)


def _pax(records: bytes) -> bytes:
    return _member("././@PaxHeader", records, b"x")


def _rec(body: bytes) -> bytes:
    """A pax record with a correct length: ``<len> <body>\\n``."""
    n = len(body) + 2
    n += len(str(n + len(str(n))))
    return b"%d %s\n" % (n, body)


def _sample(key: str, value: int = 3) -> bytes:
    return _member(f"{key}.png", _png(value)) + _member(f"{key}.json", _meta())


@functools.lru_cache(maxsize=None)
def big_png(side: int) -> bytes:
    """A valid 1-bit ``side`` x ``side`` PNG written chunk by chunk (30000 px: 110 kB, 0.3 s)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\0" * (1 + (side + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _bmp_claiming(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, format="BMP")
    raw = bytearray(buf.getvalue())
    raw[18:26] = struct.pack("<ii", width, height)
    return bytes(raw)


def _npy_header(shape: Tuple[int, ...], dtype: str = "<f4", data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


# what goes between sample "a" and sample "b", and what the bad_tar detail says
TAR_CASES: Dict[str, Tuple[Callable[[], bytes], str]] = {
    "pax_record_length_0": (lambda: _pax(b"0 path=x\n"), "length 0 does not end a record"),
    "pax_record_length_negative": (lambda: _pax(b"-9 path=x\n"), "does not start with a decimal length"),
    "pax_record_length_not_a_number": (lambda: _pax(b"ab path=x\n"), "does not start with a decimal length"),
    "pax_record_length_past_its_header": (lambda: _pax(b"99 path=x\n"), "does not end a record"),
    "pax_record_without_equals": (lambda: _pax(_rec(b"pathx")), "no key=value"),
    "pax_value_not_utf8": (lambda: _pax(_rec(b"path=\xff\xfe.png")), "not UTF-8"),
    "pax_size_1e11": (lambda: _pax(_rec(b"size=100000000000")) + _header("c.png", 0), "declares 100000000000 bytes"),
    "pax_size_negative": (lambda: _pax(_rec(b"size=-9")) + _header("c.png", 0), "bad pax size '-9'"),
    "gnu_long_name_8gb": (lambda: _header("././@LongLink", 0, b"L", b"77777777777\0"),
                          "pax/long-name header may hold 0 to"),
    "member_size_past_end_of_file": (lambda: _header("c.png", 0, size_field=b"00077777777\0"),
                                     "unexpected end of data"),
    "member_size_base256_negative": (lambda: _header("c.png", 0, size_field=b"\xff" * 12), "declares -1 bytes"),
    "member_name_not_utf8": (lambda: _header(b"\xff\xfe.png", 0), "not UTF-8"),
}


def _bounded(fn: Callable[[], Any], timeout: float = GUARD_S) -> Any:
    """``fn()`` in a daemon thread joined with a timeout: a hang fails the test (the thread is left behind)."""
    out: Dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still running after {timeout} s: a hang"
    if "error" in out:
        raise out["error"]
    return out["value"]


def _shard(path: Path, *parts: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(parts) + END)
    return path


# --------------------------------------------------------------------------- the tar parser and its callers
@pytest.mark.parametrize("case", sorted(TAR_CASES))
@pytest.mark.parametrize("reader", ["read_shard", "index", "gzip"])
def test_hostile_tar_headers_end_the_shard_counted(tmp_path, case, reader):
    hostile, detail = TAR_CASES[case]
    raw = _sample("a") + hostile() + _sample("b") + END
    if reader == "gzip":  # a compressed shard: decompressed here, then the same parser
        with pytest.raises(tarfile.ReadError, match=detail):
            _bounded(lambda: list(members(io.BytesIO(gzip.compress(raw)))))
        return
    path = tmp_path / "train-000000.tar"
    path.write_bytes(raw)
    if reader == "index":  # the feature cache's header-only index
        with pytest.raises(tarfile.ReadError, match=detail):
            _bounded(lambda: index(str(path)))
        return
    counts = SkipCounts()
    keys = _bounded(lambda: [s["__key__"] for s in read_shard(str(path), counts)])
    assert keys == ["a"]  # what came before the damage is kept
    assert dict(counts) == {"bad_tar": 1}
    assert detail in counts.examples["bad_tar"][f"{tmp_path.name}/train-000000.tar"]


def test_a_member_over_the_size_cap_is_refused_without_reading_it(tmp_path):
    """A real (sparse) 1.5 GiB member: within the file, over MAX_MEMBER_BYTES (1 GiB) — bad_tar, not a MemoryError."""
    path = tmp_path / "big.tar"
    with open(path, "wb") as f:
        f.write(_sample("a") + _header("huge.npy", 0, size_field=b"%011o\0" % (3 << 29)))
        f.truncate(f.tell() + (3 << 29) + 1024)  # sparse: no disk, no time
    counts = SkipCounts()
    assert _bounded(lambda: [s["__key__"] for s in read_shard(str(path), counts)]) == ["a"]
    assert "declares 1610612736 bytes: refused" in counts.describe()
    with pytest.raises(tarfile.ReadError, match="a member may hold 0 to 1073741824 bytes"):
        index(str(path))


def test_decompression_bomb_is_refused_before_it_is_held():
    """bz2 of a tar holding 70 MiB of zeros: 179 bytes. Refused past MAX_EXPANSION x the compressed bytes."""
    c = bz2.BZ2Compressor(9)
    zeros = b"\0" * (1 << 20)
    body = [c.compress(_header("big.png", 70 << 20))] + [c.compress(zeros) for _ in range(70)] + [c.flush()]
    with pytest.raises(tarfile.ReadError, match="decompression bomb"):
        _bounded(lambda: list(members(io.BytesIO(b"".join(body)))))


def test_tarfile_fallback_and_links_are_bounded_too(tmp_path):
    # an old v7 header (no ustar magic: tarfile reads it) with a GNU long name declaring 8 GB
    v7 = bytearray(_header("././@LongLink", 0, b"L", b"77777777777\0"))
    v7[257:265] = b"\0" * 8
    v7[148:156] = b" " * 8
    v7[148:156] = b"%06o\0 " % sum(v7)
    with pytest.raises(tarfile.ReadError):
        _bounded(lambda: list(members(io.BytesIO(bytes(v7) + _sample("b") + END))))
    # a symlink declaring 1 MiB of data: links carry none (tarfile's rule), so the next header is read as one
    raw = _sample("a") + _header("c.png", 0, b"2", b"%011o\0" % (1 << 20)) + _sample("b") + END
    got = list(members(io.BytesIO(raw)))
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        assert [n for n, _, _ in got] == t.getnames()
    assert [(n, regular) for n, regular, _ in got if n.startswith("c")] == [("c.png", False)]


# --------------------------------------------------------------------------- the readers: train, eval, curate
def _dataset(root: Path, split_bytes: bytes) -> Path:
    """Four clean test PNGs and a shard holding ``split_bytes`` in the test split; the train split is that shard
    alone, so the resampled training stream reads it every time."""
    with DatasetWriter(root, shard_size=100) as w:
        for i in range(4):
            w.write(f"test{i:03d}", _png(20 * i + 7), "png", i % 2, {"site": "AB"[i % 2]}, "test")
        w.close()
    for split in ("train", "test"):
        _shard(root / split / f"{split}-000009.tar", split_bytes)
    return root


def _cfg(root: Path, *over: str):
    return load_config(Recipe, [f"data.root={root}", "data.image_size=16", "data.batch_size=4", "data.num_workers=0",
                                "data.shuffle_buffer=1", "data.epoch_samples=16", *over])


def _read(reader: str, cfg) -> Tuple[List[str], SkipCounts]:
    if reader == "curate":
        import torch

        from agglom.curate.embed import embed_splits

        emb = embed_splits(cfg, ["test"], lambda x: x.mean((2, 3)), torch.device("cpu"), progress="off")
        return list(emb.keys), SkipCounts()  # curate logs the loader's counts; the keys say what was used
    loader = eval_loader(cfg, "test") if reader == "eval" else train_loader(cfg)
    keys = [k for batch in loader for k in batch["key"]]
    return keys, loader.stats


@pytest.mark.parametrize("case", sorted(TAR_CASES))
@pytest.mark.parametrize("reader", ["eval", "train"])
def test_hostile_tar_headers_through_the_loaders(tmp_path, case, reader):
    hostile, detail = TAR_CASES[case]
    root = _dataset(tmp_path / "ds", _sample("hx") + hostile() + _sample("hy"))
    keys, stats = _bounded(lambda: _read(reader, _cfg(root)))
    assert stats.get("bad_tar") == 1 and detail in stats.describe()
    assert "hx" in keys and "hy" not in keys


def test_curate_reads_past_a_pax_record_of_length_0(tmp_path):
    root = _dataset(tmp_path / "ds", _sample("hx") + _pax(b"0 path=x\n") + _sample("hy"))
    keys, _ = _bounded(lambda: _read("curate", _cfg(root)))
    assert sorted(keys) == ["hx", "test000", "test001", "test002", "test003"]


SAMPLE_CASES: Dict[str, Tuple[Callable[[], List[Tuple[str, bytes]]], str, str]] = {
    # members of one hostile sample (key "h" unless the case is the key), skip reason, what the detail says
    "png_30000x30000": (lambda: [("h.png", big_png(30000)), ("h.json", _meta())], "bad_image",
                        "30000x30000 pixels (900 MP) is over the readers' limit of 40 MP"),
    "png_12000x12000_pil_only_warns": (lambda: [("h.png", big_png(12000)), ("h.json", _meta())], "bad_image",
                                       "12000x12000 pixels"),
    "bmp_header_10000x10000": (lambda: [("h.bmp", _bmp_claiming(10000, 10000)), ("h.json", _meta())], "bad_image",
                               "10000x10000 pixels"),
    "bmp_header_65535x65535": (lambda: [("h.bmp", _bmp_claiming(65535, 65535)), ("h.json", _meta())], "bad_image",
                               "the readers' limit is 40 MP"),
    "npy_6400x6400": (lambda: [("h.npy", _npy_header((6400, 6400), "|u1", bytes(6400 * 6400))), ("h.json", _meta())],
                      "bad_image", "6400x6400 pixels"),
    "npy_header_larger_than_its_data": (lambda: [("h.npy", _npy_header((100000, 100000))), ("h.json", _meta())],
                                        "bad_image", "(truncated)"),
    "json_nested_100000_deep": (lambda: [("h.png", _png()), ("h.json", b"[" * 100000)], "bad_json",
                                "nested more than 64 levels"),
    "json_over_1_mib": (lambda: [("h.png", _png()), ("h.json", b'{"label": 1, "x": "' + b"y" * (1 << 20) + b'"}')],
                        "bad_json", "over the 1048576-byte limit"),
    "key_absolute_path": (lambda: [("/etc/x.png", _png()), ("/etc/x.json", _meta())], "bad_key", "absolute path"),
    "key_with_dotdot": (lambda: [("a/../../x.png", _png()), ("a/../../x.json", _meta())], "bad_key", "'..' part"),
}


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", sorted(SAMPLE_CASES))
@pytest.mark.parametrize("reader", ["eval", "train"])
def test_hostile_samples_are_skipped_and_counted(tmp_path, case, reader):
    make, reason, detail = SAMPLE_CASES[case]
    root = _dataset(tmp_path / "ds", b"".join(_member(n, d) for n, d in make()) + _sample("ok"))
    keys, stats = _bounded(lambda: _read(reader, _cfg(root)))
    assert dict(stats) == {reason: 1}, stats.describe()
    assert detail in stats.describe()
    assert not [k for k in keys if k in ("h", "/etc/x", "a/../../x")]
    assert "ok" in keys


def test_a_mask_over_the_pixel_limit_is_dropped_not_decoded(tmp_path):
    members_ = [("h.png", _png()), ("h.json", _meta()), ("h.mask.png", big_png(30000))]
    root = _dataset(tmp_path / "ds", b"".join(_member(n, d) for n, d in members_))
    loader = eval_loader(_cfg(root), "test", masks=True)
    keys = _bounded(lambda: [k for b in loader for k in b["key"]])
    assert "h" in keys and loader.stats.noted.get("bad_mask") == 1


def test_json_limits_measure_nesting_outside_strings():
    from agglom.data.limits import sample_json, unsafe_key

    brackets = '[[{[\\"[[' * 40  # escaped quotes too: the string does not end there
    assert sample_json(f'{{"label": 1, "caption": "{brackets}"}}'.encode())["label"] == 1
    assert sample_json(json.dumps({"label": [[1, 2]] * 200}).encode("utf-16"))["label"][0] == [1, 2]
    with pytest.raises(ValueError, match="nested more than 64"):
        sample_json(b'{"a": ' * 65 + b"1" + b"}" * 65)
    assert sample_json(b'{"a": ' * 63 + b"1" + b"}" * 63)
    for bad in ("/etc/x", "\\x", "a/../b", "..", "a\\..\\b", "a\0b", "", "line\nbreak"):
        assert unsafe_key(bad), bad
    for good in ("s000", "a/b/c", "a..b", "x.y", "..a"):
        assert unsafe_key(good) is None, good


def test_dicom_over_the_pixel_limit_is_skipped_before_decoding(tmp_path):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    from agglom.data.dicom import DicomSkip, dicom_to_png

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "big.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = 30000
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = b"\0" * 64
    ds.save_as(str(tmp_path / "big.dcm"), enforce_file_format=True)
    with pytest.raises(DicomSkip, match="30000x30000 pixels .* over the readers' limit of 40 MP") as e:
        dicom_to_png(tmp_path / "big.dcm")
    assert e.value.reason == "dicom_unsupported"


# --------------------------------------------------------------------------- the feature cache
def _cache_args(root: Path, out: Path) -> List[str]:
    return [f"data.root={root}", "data.image_size=32", "data.num_workers=0", "teachers=[{name: tiny-clip}]",
            f"cache.out={out}", "cache.splits=[train]"]


def test_agglom_cache_on_hostile_shards_counts_them_and_writes_only_safe_names(tmp_path, capsys):
    """The real CLI (guarded by a thread): a pax record of length 0 ends the shard (bad_tar), keys that name paths
    are skipped (bad_key); the cache holds the other samples under their keys, nothing else."""
    from agglom.cli import main

    hostile = (_sample("a") + _member("/etc/x.png", _png()) + _member("/etc/x.json", _meta())
               + _member("../y.png", _png()) + _member("../y.json", _meta()) + _sample("b")
               + _pax(b"0 path=x\n") + _sample("c"))
    root = _dataset(tmp_path / "ds", hostile)
    out = tmp_path / "cache"
    assert _bounded(lambda: main(["cache", *_cache_args(root, out)])) == 0
    printed = capsys.readouterr().out
    assert "train/train-000009.tar: skipped 3: bad_tar 1" in printed and "bad_key 2" in printed, printed
    with tarfile.open(out / "tiny-clip" / "train" / "train-000009.tar") as t:
        assert t.getnames() == ["a.feat", "b.feat"]


def test_a_second_cache_run_on_the_same_folder_is_refused_naming_the_holder(tmp_path, capsys):
    from agglom.cli import main

    out = tmp_path / "cache"
    code = ("import sys; from agglom.cache.lock import CacheLock\n"
            f"with CacheLock({str(out / 'tiny-clip')!r}):\n print('held', flush=True); sys.stdin.readline()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "held"
        root = _dataset(tmp_path / "ds", _sample("a"))
        assert main(["cache", *_cache_args(root, out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"pid {holder.pid}" in err and str(out / "tiny-clip") in err, err
        assert not (out / "tiny-clip" / "train").exists()  # nothing written
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=GUARD_S)


def _cache_folder(root: Path, shards: Dict[str, bytes]) -> Dict[str, Any]:
    (root / "train").mkdir(parents=True)
    for name, raw in shards.items():
        (root / "train" / name).write_bytes(raw)
    return {"summary_dim": 2, "spatial_dim": 1, "grid": [1, 1], "dtype": "fp32",
            "splits": {"train": {"shards": {name: 1 for name in shards}}}}


def test_the_cache_reader_never_trusts_names_or_sizes(tmp_path):
    from agglom.cache.reader import CachedTeacher, StaleCacheError, open_cache

    feat = np.arange(3, dtype=np.float32).tobytes()
    good = _member("k.feat", feat) + _member("../../evil.feat", feat) + _member("/abs.feat", feat) + END
    teacher = CachedTeacher(tmp_path / "ok", _cache_folder(tmp_path / "ok", {"s.tar": good}))
    assert list(teacher.index) == ["k.feat"] and teacher.keys() == ["k"]  # path-like names are not keys
    summary, spatial = teacher.get("k")
    assert summary.tolist() == [0, 1] and spatial.shape == (1, 1, 1)
    for name, raw, why in (("pax.tar", _sample("a") + _pax(b"0 path=x\n") + END, "length 0"),
                           ("gz.tar", gzip.compress(good), "not an uncompressed"),
                           ("size.tar", _member("k.feat", feat[:8]) + END, None)):
        root = tmp_path / name
        manifest = _cache_folder(root, {name: raw})
        if why is None:  # an entry of the wrong size for the manifest's shapes
            with pytest.raises(StaleCacheError, match="does not match the manifest"):
                CachedTeacher(root, manifest).get("k")
            continue
        with pytest.raises(StaleCacheError, match=f"train/{name} cannot be read .*{why}"):
            _bounded(functools.partial(CachedTeacher, root, manifest))
    manifest = _cache_folder(tmp_path / "up", {})
    manifest["splits"]["train"]["shards"] = {"../../etc/passwd": 1}
    with pytest.raises(StaleCacheError, match="not a file name"):
        CachedTeacher(tmp_path / "up", manifest)
    (tmp_path / "up" / "manifest.json").write_text('{"schema": ')
    with pytest.raises(StaleCacheError, match="not valid JSON"):
        open_cache(str(tmp_path / "up"), "tiny-clip", None, "digest")
