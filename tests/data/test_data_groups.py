"""Group specs, decoding and transforms."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from agglom.config.load import load_config
from agglom.config.schema import GroupSpec, Recipe
from agglom.data.decode import DecodeError, decode_image
from agglom.data.groups import GroupIndexer, group_names
from agglom.data.transforms import build_transform, data_config

SHEET = {"attributes": {"site": {"type": "categorical", "values": ["B", "A"]},
                        "sex": {"type": "categorical", "values": ["M", "F"]},
                        "age": {"type": "numeric", "summary": {}},
                        "grade": {"type": "numeric", "values": [3, 1, 2]}}}


def test_plain_attribute_sorted_values_and_unknown():
    gi = GroupIndexer([], by="site", datasheet=SHEET)
    assert gi.names == ["A", "B", "unknown"] and gi.num_groups == 3 and gi.unknown_index == 2
    assert gi.index({"site": "A"}) == 0 and gi.index({"site": "B"}) == 1
    assert gi.index({"sex": "F"}) == 2  # missing attribute
    assert gi.index({"site": "C"}) == 2  # value outside the known set
    assert gi.index({"site": None}) == 2 and gi.index({}) == 2 and gi.index(None) == 2
    assert GroupIndexer([], by="grade", datasheet=SHEET).names == ["1", "2", "3", "unknown"]
    assert GroupIndexer([], by="grade", datasheet=SHEET).index({"grade": 2.0}) == 1


def test_declared_values_order_and_errors():
    gi = GroupIndexer([GroupSpec(name="site", attr="site", values=["B", "A"])], by="site")
    assert gi.names == ["B", "A", "unknown"]
    with pytest.raises(ValueError, match="no known values"):
        GroupIndexer([], by="site")  # no datasheet, no values
    with pytest.raises(ValueError, match="no known values"):
        GroupIndexer([], by="age", datasheet=SHEET)  # numeric without bins


def test_bins():
    specs = [{"name": "age_bin", "attr": "age", "bins": [0, 60, 200]}]
    gi = GroupIndexer(specs, by="age_bin", datasheet=SHEET)
    assert gi.names == ["[0,60)", "[60,200)", "unknown"]
    assert [gi.index({"age": a}) for a in (0, 59.9, 60, 199, 200, -1, "x", None, float("nan"))] == [0, 0, 1, 1, 2, 2, 2, 2, 2]
    assert gi.index({"age": "63"}) == 1  # numeric strings are binned too
    assert GroupIndexer([{"name": "b", "attr": "age", "bins": [0.5, 1.25]}], by="b").names == ["[0.5,1.25)", "unknown"]
    with pytest.raises(ValueError, match="increasing"):
        GroupIndexer([{"name": "b", "attr": "age", "bins": [3, 1]}], by="b")


def test_intersection_and_values_of():
    specs = [GroupSpec(name="site_sex", attrs=["site", "sex"]), GroupSpec(name="age_bin", attr="age", bins=[0, 60, 200]),
             GroupSpec(name="site_age", attrs=["site", "age_bin"])]
    gi = GroupIndexer(specs, by="site_sex", datasheet=SHEET)
    assert gi.names == ["A|F", "A|M", "B|F", "B|M", "unknown"]
    assert gi.index({"site": "B", "sex": "F"}) == 2
    assert gi.index({"site": "B"}) == 4 and gi.index({"site": "B", "sex": "X"}) == 4
    assert gi.values_of("site_sex", {"site": "A", "sex": "M"}) == "A|M"
    assert gi.values_of("age_bin", {"age": 70}) == "[60,200)"
    assert gi.values_of("site", {"site": "Z"}) == "unknown"
    assert gi.values_of("sex", {"sex": "F"}) == "F"
    assert gi.names_of("site_age") == ["A|[0,60)", "A|[60,200)", "B|[0,60)", "B|[60,200)", "unknown"]
    assert group_names("site_age", specs, SHEET)[-1] == "unknown"


def test_indexer_accepts_omegaconf_specs():
    cfg = load_config(Recipe, [])
    cfg.groups.specs = [GroupSpec(name="s", attr="site", values=["A", "B"])]
    gi = GroupIndexer(list(cfg.groups.specs), by="s")
    assert gi.names == ["A", "B", "unknown"]


# --------------------------------------------------------------------------- decode
def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_png_8_and_16_bit_jpg_npy():
    a8 = np.array([[0, 128], [255, 64]], dtype=np.uint8)
    t = decode_image(_png(a8), "png", "keep")
    assert t.shape == (1, 2, 2) and torch.allclose(t[0], torch.from_numpy(a8 / 255.0).float())
    a16 = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    t = decode_image(_png(a16), "png", "replicate")
    assert t.shape == (3, 2, 2) and torch.allclose(t[1], torch.from_numpy(a16 / 65535.0).float())
    small16 = np.array([[0, 300]], dtype=np.uint16)  # a 16-bit image with small values stays small
    assert decode_image(_png(small16), "png", "keep").max() < 0.01
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    assert decode_image(_png(rgb), "png", "replicate").shape == (3, 4, 4)
    assert decode_image(_png(rgb), "png", "keep").shape == (1, 4, 4)
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(buf, format="JPEG", quality=95)
    assert abs(float(decode_image(buf.getvalue(), "jpg", "keep").mean()) - 200 / 255) < 0.02
    for arr, shape in ((np.ones((5, 6), np.float32), (3, 5, 6)), (np.ones((5, 6, 3), np.float32), (3, 5, 6)),
                       (np.ones((3, 5, 6), np.float32), (3, 5, 6)), (np.ones((1, 5, 6), np.float64), (3, 5, 6))):
        buf = io.BytesIO()
        np.save(buf, arr)
        assert decode_image(buf.getvalue(), "npy").shape == shape


@pytest.mark.parametrize("data,ext,match", [(b"", "png", "empty"), (b"garbage" * 10, "png", "not a PNG"),
                                            (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "png", "png"),
                                            (b"\xff\xd8\xff" + b"\0" * 20, "jpg", "jpg"), (b"nonsense", "npy", "npy"),
                                            (b"abc", "tiff", "tiff: cannot decode"), (b"abc", "jp2", "unsupported")])
def test_decode_bad_bytes(data, ext, match):
    with pytest.raises(DecodeError, match=match):
        decode_image(data, ext)


def test_decode_rejects_object_npy_and_nan():
    buf = io.BytesIO()
    np.save(buf, np.array([np.nan, 1.0], np.float32).reshape(1, 2))
    with pytest.raises(DecodeError, match="non-finite"):
        decode_image(buf.getvalue(), "npy")
    buf = io.BytesIO()
    np.save(buf, np.ones((2, 2, 2, 2), np.float32))
    with pytest.raises(DecodeError, match="2D or 3D"):
        decode_image(buf.getvalue(), "npy")


# --------------------------------------------------------------------------- transforms
def test_transforms_eval_deterministic_train_augments():
    cfg = load_config(Recipe, ["data.image_size=16", "student.mean=[0.5,0.5,0.5]", "student.std=[0.5,0.5,0.5]",
                               "data.augment.hflip=1.0", "data.augment.scale_min=0.5", "data.augment.rotate=20",
                               "data.interpolation=bilinear"])
    dc = data_config(cfg)
    assert dc["input_size"] == (3, 16, 16) and dc["interpolation"] == "bilinear" and dc["mean"] == (0.5, 0.5, 0.5)
    img = torch.rand(3, 24, 20)
    ev = build_transform(cfg, train=False)
    out = ev(img)
    assert out.shape == (3, 16, 16) and torch.equal(out, ev(img))
    same = torch.rand(3, 16, 16)
    assert torch.allclose(ev(same), (same - 0.5) / 0.5)  # eval at the native size is normalise only
    tr = build_transform(cfg, train=True)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = tr(img, g1), tr(img, g2)
    assert a.shape == (3, 16, 16) and torch.equal(a, b)
    assert not torch.equal(a, out)
    keep = load_config(Recipe, ["data.grayscale=keep", "data.image_size=8", "student.model_args={patch_size: 4}"])
    assert data_config(keep)["input_size"] == (1, 8, 8) and build_transform(keep)(torch.rand(1, 8, 8)).shape == (1, 8, 8)
