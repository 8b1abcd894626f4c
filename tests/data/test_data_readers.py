"""Readers: exact eval pass, deterministic/resumable training stream, skip counting, groups, sidecars."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from agglom.config.load import ConfigError, load_config
from agglom.config.schema import GroupSpec, Recipe
from agglom.data.readers import eval_loader, load_sidecars, train_loader
from agglom.data.writer import DatasetWriter


def make_cfg(root, *overrides):
    return load_config(Recipe, [f"data.root={root}", "data.image_size=32", "data.batch_size=8", *overrides])


def _png(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _all_keys(loader):
    return [k for b in loader for k in b["key"]]


def _synth_keys(root, split):
    keys = []
    for p in sorted((root / split).glob("*.tar")):
        with tarfile.open(p) as t:
            keys += [m.name.split(".")[0] for m in t.getmembers() if m.name.endswith(".json")]
    return keys


# --------------------------------------------------------------------------- eval reader
@pytest.mark.parametrize("workers", [0, 2])
def test_eval_each_sample_exactly_once(synth_root, workers):
    cfg = make_cfg(synth_root, f"data.num_workers={workers}")
    loader = eval_loader(cfg, "train", batch_size=7)
    first = _all_keys(loader)
    expected = _synth_keys(synth_root, "train")
    assert len(first) == len(expected) == len(set(first))
    assert set(first) == set(expected)
    assert _all_keys(loader) == first  # fixed order
    assert loader.stats.total == 0 and loader.samples == len(expected)


def test_eval_batch_contract(synth_root):
    cfg = make_cfg(synth_root, "data.num_workers=0", "student.mean=[0.5,0.5,0.5]", "student.std=[0.25,0.25,0.25]")
    b = next(iter(eval_loader(cfg, "val")))
    assert b["image"].shape == (8, 3, 32, 32) and b["image"].dtype == torch.float32
    assert b["label"].dtype == torch.long and b["label"].shape == (8,)
    assert b["group"].dtype == torch.long and b["group"].shape == (8,)
    assert isinstance(b["attrs"], list) and isinstance(b["attrs"][0], dict) and "site" in b["attrs"][0]
    assert len(b["key"]) == 8
    names = eval_loader(cfg, "val").group_names
    assert names == ["A", "B", "unknown"]
    for a, g in zip(b["attrs"], b["group"].tolist()):
        assert names[g] == a["site"]
    assert b["image"].min() >= -2.0 - 1e-5 and b["image"].max() <= 2.0 + 1e-5  # (x - .5) / .25
    keep = make_cfg(synth_root, "data.num_workers=0", "data.grayscale=keep")
    assert next(iter(eval_loader(keep, "val")))["image"].shape[1] == 1


@pytest.mark.parametrize("nshards", [1, 6])
def test_eval_split_by_rank_and_worker(synth_root, tmp_path, monkeypatch, nshards):
    # few shards (fewer than ranks x workers) -> sample-level split; many -> shard-level split
    root = synth_root if nshards == 6 else tmp_path / "one"
    if nshards == 1:
        with DatasetWriter(root, shard_size=1000) as w:
            for i in range(21):
                w.write(f"k{i:03d}", _png(i), "png", i % 2, {"site": "A"}, "test")
            w.close()
    cfg = make_cfg(root, "data.num_workers=2", "groups.by=site")
    expected = set(_synth_keys(root, "test"))
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen += _all_keys(eval_loader(cfg, "test", batch_size=4))
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))


# --------------------------------------------------------------------------- training reader
AUG = ["data.augment.hflip=0.5", "data.augment.scale_min=0.6", "data.augment.ratio_jitter=0.2",
       "data.augment.rotate=10", "data.augment.brightness=0.2", "data.augment.contrast=0.2"]


def _batches(loader):
    return [(b["key"], b["image"].clone(), b["label"].clone()) for b in loader]


def _same(a, b):
    assert len(a) == len(b)
    for (ka, ia, la), (kb, ib, lb) in zip(a, b):
        assert ka == kb
        assert torch.equal(ia, ib) and torch.equal(la, lb)


@pytest.mark.parametrize("workers", [0, 2])
def test_train_deterministic_and_resumable(synth_root, workers):
    cfg = make_cfg(synth_root, f"data.num_workers={workers}", "data.epoch_samples=72", "data.shuffle_buffer=30", *AUG)
    full = _batches(train_loader(cfg, epoch=0))
    assert len(full) == 9 and len(train_loader(cfg)) == 9
    _same(full, _batches(train_loader(cfg, epoch=0)))
    for k in (1, 4):
        _same(full[k:], _batches(train_loader(cfg, epoch=0, skip_batches=k)))
    other = _batches(train_loader(cfg, epoch=1))
    assert [k for k, _, _ in other] != [k for k, _, _ in full]
    reseeded = _batches(train_loader(make_cfg(synth_root, f"data.num_workers={workers}", "data.epoch_samples=72",
                                              "data.shuffle_buffer=30", "data.seed=5", *AUG)))
    assert [k for k, _, _ in reseeded] != [k for k, _, _ in full]


def test_train_epoch_length_over_ranks(synth_root, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    per_rank = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        cfg = make_cfg(synth_root, "data.num_workers=2", "data.epoch_samples=64")
        per_rank.append(_all_keys(train_loader(cfg)))
    assert [len(k) for k in per_rank] == [32, 32]
    assert per_rank[0] != per_rank[1]


def test_train_augmentation_only_in_training(synth_root):
    cfg = make_cfg(synth_root, "data.num_workers=0", *AUG)
    a = next(iter(eval_loader(cfg, "val")))["image"]
    b = next(iter(eval_loader(make_cfg(synth_root, "data.num_workers=0"), "val")))["image"]
    assert torch.equal(a, b)


def test_group_balanced_and_weights(synth_root):
    base = ["data.num_workers=0", "data.epoch_samples=400", "data.shuffle_buffer=50", "groups.by=site"]
    plain = [a["site"] for b in train_loader(make_cfg(synth_root, *base)) for a in b["attrs"]]
    bal = [a["site"] for b in train_loader(make_cfg(synth_root, *base, "data.group_balanced=true")) for a in b["attrs"]]
    assert plain.count("B") / len(plain) < 0.2
    assert 0.35 < bal.count("B") / len(bal) < 0.65
    cfg = make_cfg(synth_root, *base)
    cfg.data.group_weights = {"B": 0.0}
    assert all(a["site"] == "A" for b in train_loader(cfg) for a in b["attrs"])
    cfg.data.group_weights = {"C": 1.0}
    with pytest.raises(ConfigError, match="unknown group"):
        train_loader(cfg)


def test_group_spec_from_config(synth_root):
    cfg = make_cfg(synth_root, "data.num_workers=0", "groups.by=age_bin")
    cfg.groups.specs = [GroupSpec(name="age_bin", attr="age", bins=[0, 50, 200]),
                        GroupSpec(name="site_sex", attrs=["site", "sex"])]
    loader = eval_loader(cfg, "val")
    assert loader.group_names == ["[0,50)", "[50,200)", "unknown"]
    for b in loader:
        for a, g in zip(b["attrs"], b["group"].tolist()):
            assert g == (0 if a["age"] < 50 else 1)
    cfg.groups.by = "site_sex"
    assert eval_loader(cfg, "val").group_names == ["A|F", "A|M", "B|F", "B|M", "unknown"]


# --------------------------------------------------------------------------- corrupt inputs
@pytest.fixture(scope="module")
def corrupt_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt") / "ds"
    with DatasetWriter(root, shard_size=6) as w:
        for i in range(18):  # shards 0..2, all good
            w.write(f"good{i:03d}", _png(10 * i), "png", i % 2, {"site": "AB"[i % 2]}, "train")
        w.close()
    import webdataset as wds

    with wds.TarWriter(str(root / "train" / "train-000003.tar"), encoder=False) as t:
        t.write({"__key__": "ok000", "png": _png(5), "json": b'{"label": 1, "attrs": {"site": "A"}}'})
        t.write({"__key__": "badimg", "png": b"\x89PNG\r\n\x1a\nnot really", "json": b'{"label": 0, "attrs": {}}'})
        t.write({"__key__": "badjson", "png": _png(7), "json": b'{"label": 0, "attrs": '})
        t.write({"__key__": "nolabel", "png": _png(7), "json": b'{"attrs": {"site": "A"}}'})
        t.write({"__key__": "noimage", "json": b'{"label": 1, "attrs": {}}'})
        t.write({"__key__": "badlabel", "png": _png(7), "json": b'{"label": "yes", "attrs": {}}'})
        t.write({"__key__": "ok001", "png": _png(9), "json": b'{"label": 0, "attrs": {"site": "B"}}'})
    # truncated shards: one cut inside the data of sample 3's first member, one at a member boundary
    for name, cut in (("train-000004.tar", lambda m: m[6].offset_data + 10), ("train-000005.tar", lambda m: m[6].offset)):
        full = root / "train" / "full.tar.tmp"
        prefix = "trnc" if name.endswith("4.tar") else "tcut"
        with wds.TarWriter(str(full), encoder=False) as t:
            for i in range(6):
                t.write({"__key__": f"{prefix}{i:03d}", "png": _png(i), "json": b'{"label": 1, "attrs": {"site": "A"}}'})
        with tarfile.open(full) as t:
            members = t.getmembers()
        (root / "train" / name).write_bytes(full.read_bytes()[: cut(members)])
        full.unlink()
    sheet = json.loads((root / "dataset.json").read_text())
    sheet["splits"]["train"]["samples"] += 7 + 12  # what the datasheet would list for the extra shards
    (root / "dataset.json").write_text(json.dumps(sheet))
    return root


def test_corrupt_inputs_skipped_and_counted_eval(corrupt_root):
    for workers in (0, 2):
        loader = eval_loader(make_cfg(corrupt_root, f"data.num_workers={workers}"), "train", batch_size=4)
        keys = _all_keys(loader)
        good = {f"good{i:03d}" for i in range(18)} | {"ok000", "ok001"} | {f"{p}{i:03d}" for i in (0, 1, 2) for p in ("trnc", "tcut")}
        assert set(keys) == good and len(keys) == len(good)
        # 3 + 3 samples lost in the truncated shards: the one cut mid-member is a bad_tar, the one cut at a
        # member boundary reads as a clean end and is caught by the datasheet count (missing_samples)
        assert dict(loader.stats) == {"bad_tar": 1, "bad_image": 1, "bad_json": 1, "missing_field": 2,
                                      "bad_label": 1, "missing_samples": 6}, workers


def test_corrupt_inputs_in_training_stream(corrupt_root, caplog):
    cfg = make_cfg(corrupt_root, "data.num_workers=2", "data.epoch_samples=160", "data.shuffle_buffer=20")
    loader = train_loader(cfg)
    with caplog.at_level("INFO", logger="agglom.data"):
        keys = _all_keys(loader)
    assert len(keys) == 160
    assert not {"badimg", "badjson", "nolabel", "noimage", "badlabel"} & set(keys)
    assert loader.stats.get("bad_tar", 0) >= 1 and loader.stats.total >= 2
    assert any("skipped" in r.getMessage() for r in caplog.records)


def test_missing_shards_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no shards"):
        eval_loader(make_cfg(tmp_path, "groups.by=site", "groups.specs=[{name: site, values: [A]}]"), "val")


# --------------------------------------------------------------------------- sidecars, multi-label, npy
def test_sidecars_merge_into_attrs_and_groups(synth_root, tmp_path):
    keys = _synth_keys(synth_root, "val")
    side = tmp_path / "proxy.json"
    side.write_text(json.dumps({"schema": "agglom.sidecar/1", "attr": "proxy",
                                "values": {k: f"c{i % 2}" for i, k in enumerate(keys[: len(keys) // 2])}}))
    csv_side = tmp_path / "extra.csv"
    csv_side.write_text("key,scanner\n" + "".join(f"{k},s{i % 3}\n" for i, k in enumerate(keys)))
    table = load_sidecars([str(side), str(csv_side)])
    assert table[keys[0]] == {"proxy": "c0", "scanner": "s0"}
    cfg = make_cfg(synth_root, "data.num_workers=2", "groups.by=proxy")
    cfg.data.sidecars = [str(side), str(csv_side)]
    loader = eval_loader(cfg, "val")
    assert loader.group_names == ["c0", "c1", "unknown"]
    n_unknown = 0
    for b in loader:
        for k, a, g in zip(b["key"], b["attrs"], b["group"].tolist()):
            assert a["scanner"] == table[k]["scanner"]
            if "proxy" in table[k]:
                assert a["proxy"] == table[k]["proxy"] and loader.group_names[g] == a["proxy"]
            else:
                assert g == 2
                n_unknown += 1
    assert n_unknown == len(keys) - len(keys) // 2


def test_multilabel_and_npy(tmp_path):
    root = tmp_path / "ml"
    rng = np.random.default_rng(0)
    with DatasetWriter(root, shard_size=5) as w:
        for i in range(12):
            buf = io.BytesIO()
            np.save(buf, rng.random((3, 10, 12)).astype(np.float32) if i % 2 else rng.random((10, 12)).astype(np.float32))
            w.write(f"m{i:02d}", buf.getvalue(), "npy", [i % 2, (i // 2) % 2, 1], {"sex": "FM"[i % 2]}, "test")
        w.close()
    cfg = make_cfg(root, "data.num_workers=0", "groups.by=sex", "data.image_size=16")
    batches = list(eval_loader(cfg, "test", batch_size=5))
    assert [b["label"].shape for b in batches] == [(5, 3), (5, 3), (2, 3)]
    assert batches[0]["image"].shape == (5, 3, 16, 16)


@pytest.mark.parametrize("train", [True, False])
def test_a_grayscale_image_augmented_at_one_channel_equals_the_replicated_one(train):
    """The reader keeps grayscale sources at one channel through its checks and augmentation (a third of the
    work) and the transform replicates at the end: bit for bit the image and mask of transforming the three
    replicated channels with the same draws."""
    from agglom.data.counts import SkipCounts
    from agglom.data.pipeline import load_image, load_mask
    from agglom.data.transforms import ImageTransform

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 65535, (40, 48), dtype=np.uint16)).save(buf, format="PNG")
    rec = {"id": "s0", "bytes": buf.getvalue(), "ext": "png", "mask_bytes": None}
    one = load_image(rec, SkipCounts(), "replicate", 1)
    assert one is not None and one.shape == (1, 40, 48)
    mask = load_mask(rec, SkipCounts(), one)
    aug = {"hflip": 0.5, "scale_min": 0.7, "ratio_jitter": 0.25, "rotate": 10.0, "brightness": 0.1, "contrast": 0.1}
    tf = ImageTransform({"input_size": (3, 32, 32), "mean": (0.4, 0.5, 0.6), "std": (0.2, 0.25, 0.3)}, aug,
                        train=train)
    for seed in range(4):
        a, ma = tf(one, torch.Generator().manual_seed(seed), mask=mask)
        b, mb = tf(one.expand(3, -1, -1).contiguous(), torch.Generator().manual_seed(seed), mask=mask)
        assert a.shape == b.shape == (3, 32, 32) and a.is_contiguous()
        assert torch.equal(a, b) and torch.equal(ma, mb)
        assert not torch.equal(a[0], a[1])  # per-channel normalisation still applies to each copy
