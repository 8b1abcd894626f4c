"""`agglom data pack max_side=N`: large images shrink to N on their longer side with their precision kept (16-bit
stays 16-bit, npy keeps its dtype), their masks follow with nearest-neighbour, small images are stored untouched."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from agglom.cli import main
from agglom.data.decode import png_bit_depth
from agglom.data.downsize import downsize_image, target_size
from agglom.data.masks import decode_mask
from agglom.data.writer import read_datasheet


def _members(root):
    """key -> {member: bytes} straight from the shards."""
    import webdataset as wds

    out = {}
    for tar in sorted(root.glob("*/*.tar")):
        for s in wds.tarfile_samples([dict(url=str(tar))]):
            out[s["__key__"]] = s
    return out


@pytest.mark.parametrize("h,w,n,want", [(2048, 1536, 1024, (1024, 768)), (1000, 3000, 1024, (341, 1024)),
                                        (512, 512, 1024, None), (300, 200, 0, None), (5000, 3, 100, (100, 1))])
def test_target_size_keeps_the_aspect_ratio(h, w, n, want):
    assert target_size(h, w, n) == want


def test_a_16_bit_ramp_stays_16_bit_and_keeps_its_values():
    ramp = np.tile(np.linspace(1000, 60000, 80).astype(np.uint16), (60, 1))  # 60 x 80, left to right
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    data, ext, size = downsize_image(buf.getvalue(), "png", 40)
    assert ext == "png" and size == (30, 40) and png_bit_depth(data) == 16
    out = np.asarray(Image.open(io.BytesIO(data))).astype(np.float64)
    want = np.tile(np.linspace(1000, 60000, 80).reshape(40, 2).mean(1), (30, 1))  # a ramp averages to a ramp
    # < 0.1% of the range away from the edges: finer than 8 bits could hold (a step of 257 in 16-bit units)
    assert np.abs(out - want)[:, 2:-2].max() < 60


def test_npy_keeps_its_dtype_and_float_range():
    arr = np.random.default_rng(0).uniform(-3, 5, size=(50, 20)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, arr)
    data, ext, size = downsize_image(buf.getvalue(), "npy", 25)
    got = np.load(io.BytesIO(data))
    assert ext == "npy" and size == (25, 10) and got.dtype == np.float32 and got.shape == (25, 10)
    assert got.min() >= arr.min() and got.max() <= arr.max()  # Lanczos ringing clipped to the source's range


def test_pack_max_side_with_masks_and_small_images_untouched(tmp_path):
    src, msk = tmp_path / "imgs", tmp_path / "msk"
    src.mkdir()
    msk.mkdir()
    rows = ["file,label,site"]
    rng = np.random.default_rng(1)
    small = None
    for i in range(8):
        big = i % 2 == 0
        h, w = (64, 48) if big else (20, 16)
        img = rng.integers(0, 65535, size=(h, w)).astype(np.uint16) if big else rng.integers(0, 255, (h, w)).astype(np.uint8)
        Image.fromarray(img).save(src / f"x{i}.png")
        if not big:
            small = (src / f"x{i}.png").read_bytes() if small is None else small
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4: h // 2, w // 4: w // 2] = 255
        Image.fromarray(mask).save(msk / f"x{i}.png")
        rows.append(f"imgs/x{i}.png,{i % 2},{'AB'[i % 2]}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "ds"
    args = ["data", "pack", f"out={out}", f"csv={tmp_path / 'data.csv'}", "path_col=file", "attr_cols=[site]",
            f"masks={msk}", "max_side=32"]
    assert main(args) == 0
    sheet = read_datasheet(out)
    assert sheet["params"]["max_side"] == 32 and sheet["params"]["downsized"] == 4 and sheet["samples"] == 8
    got = _members(out)
    for key, s in got.items():
        i = int(key.rsplit("x", 1)[1])
        img = np.asarray(Image.open(io.BytesIO(s["png"])))
        mask = decode_mask(s["mask.png"])
        if i % 2 == 0:
            assert img.shape == (32, 24) and png_bit_depth(s["png"]) == 16
            assert mask.shape == (32, 24) and set(np.unique(mask)) == {0, 1}
            assert mask[8:16, 6:12].all() and mask.sum() == 8 * 6  # nearest: the box scaled, no new labels
        else:
            assert img.shape == (20, 16) and png_bit_depth(s["png"]) == 8
            assert mask.shape == (20, 16)
        assert json.loads(s["json"])["source"].endswith(f"x{i}.png")
    assert got[next(k for k in got if k.endswith("x1"))]["png"] == small  # an image that fits is stored byte for byte


def test_pack_rejects_a_negative_max_side(tmp_path, capsys):
    src = tmp_path / "src" / "c"
    src.mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(src / "a.png")
    assert main(["data", "pack", f"out={tmp_path / 'o'}", f"src={tmp_path / 'src'}", "max_side=-5"]) == 2
    err = capsys.readouterr().err
    assert "max_side=-5" in err and ">= 1" in err
    assert not (tmp_path / "o").exists()  # nothing written


def test_the_shuffle_buffer_is_bounded_in_bytes_and_unchanged_below_the_bound():
    """data.shuffle_buffer_mb: the buffer holds at most that many encoded bytes (plus the record that crossed it),
    the output is a permutation of the input, and where the bound is never reached the order is the count-bounded
    buffer's, draw for draw (so runs on small images are unchanged)."""
    import random

    from agglom.data.readers import _shuffle

    recs = [{"key": str(i), "bytes": b"x" * (100 + 37 * (i % 5)), "mask_bytes": None} for i in range(300)]
    held, peak = [], [0]

    def source():
        for r in recs:
            held.append(len(r["bytes"]))
            yield r

    def run(max_bytes):
        held.clear()
        out = []
        for r in _shuffle(source(), 50, random.Random(7), max_bytes):
            out.append(r["key"])
            held.remove(len(r["bytes"]))  # what is still in the buffer after this record left it
            peak[0] = max(peak[0], sum(held))
        return out

    unbounded = run(0)
    assert sorted(unbounded, key=int) == [r["key"] for r in recs] and unbounded != [r["key"] for r in recs]
    assert run(10 ** 9) == unbounded  # bound never reached: the same draws
    peak[0] = 0
    bounded = run(2000)
    assert sorted(bounded, key=int) == [r["key"] for r in recs] and bounded != unbounded
    assert peak[0] < 2000 + 248  # at most one record over the bound (the count bound alone holds ~50 x 170 B)


def test_a_negative_shuffle_bound_exits_2(tiny_train_args, capsys):
    from agglom.cli import main

    assert main(["train", *tiny_train_args("neg", 2, **{"data.shuffle_buffer_mb": -1})]) == 2
    assert "data.shuffle_buffer_mb" in capsys.readouterr().err
