"""Segmentation masks in the data layer: pack (CSV column, masks folder) -> shards -> readers with the augmentation's
geometry applied to image and mask alike; the datasheet's mask counts; synth's lesion masks."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from agglom.cli import main
from agglom.config.load import load_config
from agglom.config.schema import Recipe
from agglom.data.masks import IGNORE, MASK_MEMBER, as_label_map, decode_mask, encode_mask
from agglom.data.readers import eval_loader, train_loader
from agglom.data.writer import DatasetWriter, read_datasheet

S = 32
GEOMETRY = ["data.augment.hflip=0.5", "data.augment.scale_min=0.5", "data.augment.ratio_jitter=0.3",
            "data.interpolation=nearest"]


def _cfg(root, *over):
    return load_config(Recipe, [f"data.root={root}", f"data.image_size={S}", "data.batch_size=8",
                                "data.num_workers=0", "data.grayscale=keep", "student.mean=[0.0]",
                                "student.std=[1.0]", "groups.by=site", *over])


def _scene(rng):
    """An image whose bright pixels are exactly its mask: a rectangle (value 200) on a dark ramp (< 100)."""
    img = (np.add.outer(np.arange(S), np.arange(S)) * 90 // (2 * S)).astype(np.uint8)
    mask = np.zeros((S, S), dtype=np.uint8)
    t, lft = rng.integers(0, S - 12, 2)
    h, w = rng.integers(4, 12, 2)
    mask[t:t + h, lft:lft + w] = 1
    img[mask == 1] = 200
    return img, mask


def _write_dataset(tmp_path, n=24):
    """Images + masks on disk and a CSV naming both (one row without a mask, one with a mask of the wrong size)."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    rows, truth = [], {}
    for i in range(n):
        img, mask = _scene(rng)
        Image.fromarray(img).save(tmp_path / "img" / f"s{i}.png")
        if i == 1:
            Image.fromarray(np.zeros((S + 2, S), np.uint8)).save(tmp_path / "msk" / f"s{i}.png")
        elif i != 0:
            Image.fromarray(mask * 255).save(tmp_path / "msk" / f"s{i}.png")
        rows.append({"path": f"img/s{i}.png", "label": i % 2, "site": "B" if i % 4 == 0 else "A",
                     "mask": "" if i == 0 else f"msk/s{i}.png"})
        truth[f"img_s{i}"] = mask
    with open(tmp_path / "data.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return truth


def _check_aligned(batch):
    """Every pixel with a mask is bright exactly where its mask is foreground."""
    img, mask = batch["image"][:, 0], batch["mask"]
    assert mask.dtype == torch.long and mask.shape == img.shape
    known = mask != IGNORE
    assert torch.equal((img[known] > 0.6), (mask[known] == 1))
    return int(known.sum())


@pytest.mark.parametrize("source", ["column", "folder"])
def test_mask_round_trip_pack_shards_reader_with_flip_and_crop(tmp_path, source):
    truth = _write_dataset(tmp_path)
    out = tmp_path / "ds"
    how = ["mask_col=mask"] if source == "column" else [f"masks={tmp_path / 'msk'}"]
    how.append("attr_cols=[site]")
    assert main(["data", "pack", f"out={out}", f"csv={tmp_path / 'data.csv'}", "shard_size=5", *how]) == 0
    sheet = read_datasheet(out)
    assert sheet["params"]["masks_source"]["dropped"] == {"bad_mask": 1}  # s1: wrong size, packed without it
    masks = sheet["masks"]
    assert sum(v["samples"] for v in masks["splits"].values()) == 22
    assert sum(v["without_mask"] for v in masks["splits"].values()) == 2
    for per in masks["by_attribute"]["site"].values():  # area per group = the mean foreground fraction
        for cell in per.values():
            assert cell["samples"] >= 1 and 0 < cell["mean_area"] < 0.2

    cfg = _cfg(out)
    seen = {}
    for split in ("train", "val", "test"):
        for b in eval_loader(cfg, split, masks=True):
            _check_aligned(b)
            for k, m in zip(b["key"], b["mask"]):
                seen[k] = m.numpy()
    assert len(seen) == 24
    for k, m in seen.items():  # no augmentation: the stored masks, bit for bit; none -> IGNORE everywhere
        if k in ("img_s0", "img_s1"):
            assert (m == IGNORE).all()
        else:
            assert np.array_equal(m, truth[k])

    aug = _cfg(out, *GEOMETRY, "data.epoch_samples=48")
    with_masks = list(train_loader(aug, masks=True))
    plain = list(train_loader(aug))
    flipped = 0
    for b, p in zip(with_masks, plain):
        assert torch.equal(b["image"], p["image"]) and "mask" not in p  # a mask never changes the augmentation
        assert _check_aligned(b) > 0
        for k, m in zip(b["key"], b["mask"]):
            if k not in ("img_s0", "img_s1") and not np.array_equal(m.numpy(), truth[k]):
                flipped += 1
    assert flipped > 0  # the geometry did act on the masks


def test_reader_without_masks_and_a_bad_mask_member(tmp_path):
    """Shards without masks read as before (masks=True gives IGNORE); an unusable mask member is dropped and
    noted, and its sample still used."""
    root = tmp_path / "ds"
    rng = np.random.default_rng(1)
    with DatasetWriter(root, shard_size=10) as w:
        for i in range(6):
            img, mask = _scene(rng)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            bad = i == 3
            w.write(f"k{i}", buf.getvalue(), "png", 0, {"site": "A"}, "val",
                    mask=(b"not a png" if bad else encode_mask(mask)) if i >= 3 else None,
                    mask_area=0.1 if bad else None)
        w.close(name="t")
    cfg = _cfg(root)
    plain = next(iter(eval_loader(cfg, "val")))
    assert "mask" not in plain and len(plain["key"]) == 6
    loader = eval_loader(cfg, "val", masks=True)
    b = next(iter(loader))
    assert len(b["key"]) == 6 and loader.stats.noted.get("bad_mask") == 1 and loader.stats.total == 0
    assert torch.equal(b["image"], plain["image"])
    assert [bool((m == IGNORE).all()) for m in b["mask"]] == [True, True, True, True, False, False]


def test_mask_values_binary_255_and_label_maps():
    assert as_label_map(np.array([[0, 255], [255, 0]], np.uint8)).tolist() == [[0, 1], [1, 0]]
    lab = np.array([[0, 1], [2, 3]], np.uint8)
    assert decode_mask(encode_mask(lab)).tolist() == lab.tolist()
    assert decode_mask(encode_mask(np.array([[0, 1]]), binary_255=True)).tolist() == [[0, 1]]
    big = np.array([[0, 300]])
    assert decode_mask(encode_mask(big)).tolist() == [[0, 300]]
    with pytest.raises(ValueError):
        as_label_map(np.array([[0.5, 1.0]]))


def test_synth_writes_the_lesion_as_a_mask(synth_root):
    """Every synth sample carries mask.png: the lesion of a diseased subject, all background for a healthy one;
    the images are the renderer's (drawing masks changes none of them)."""
    import webdataset as wds

    from agglom.data.decode import decode_array
    from agglom.data.synth import SynthParams, render, subjects

    p = SynthParams(n=240, image_size=32, seed=0)
    imgs, lesions = render(p, lesions=True)
    assert np.array_equal(imgs, render(p))
    s = subjects(p)
    n = 0
    for split in ("train", "val", "test"):
        for smp in wds.tarfile_samples([dict(url=str(u)) for u in sorted((synth_root / split).glob("*.tar"))]):
            i = int(smp["__key__"][5:])
            assert np.array_equal(np.round(decode_array(smp["png"], "png") * 255).astype(np.uint8), imgs[i])
            m = decode_mask(smp[MASK_MEMBER])
            assert np.array_equal(m, lesions[i])
            assert (m.sum() > 0) == bool(s["label"][i]) or not s["label"][i]
            n += 1
    assert n == 240
    diseased = lesions[s["label"]]
    assert (diseased.reshape(len(diseased), -1).sum(1) > 0).mean() > 0.95
    assert lesions[~s["label"]].sum() == 0
    sheet = json.loads((synth_root / "dataset.json").read_text())
    assert sum(v["samples"] for v in sheet["masks"]["splits"].values()) == 240
    assert set(sheet["masks"]["by_attribute"]["site"]["test"]) == {"A", "B"}
