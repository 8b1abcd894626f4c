"""`agglom data synth images_per_patient=K`: K follow-up images per subject, patients kept whole by the splits, and
K=1 (the default) byte for byte the benchmark written before the option existed (agglom/data/synth.py)."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from agglom.cli import main
from agglom.data.decode import decode_array
from agglom.data.patients import PATIENT
from agglom.data.synth import MAX_IMAGES_PER_PATIENT, SynthParams, _png, render, subjects, write_synth
from agglom.data.writer import read_datasheet

# Recorded by running the code as it was BEFORE images_per_patient existed (commit 3fea5dd) on the configuration of
# test_one_image_per_patient_is_unchanged_bit_for_bit: the option's default must write exactly these shards and
# datasheets. The datasheets are hashed without "created" and "generation_seconds" (a clock, different every run).
# The tar digests hold for this PNG encoder (Pillow + zlib): _PNG_PROBE is the encoding of a fixed array then, and
# where another encoder writes other bytes only the byte-level comparison is skipped (the decoded pixels, the
# members' names, labels, attributes and splits still must match _CONTENT).
_TARS = {
    "test/test-000000.tar": "2374036845da3ce1379db9c3acfc94b1bda477c51b17462cd0efcb9c9ad1ab31",
    "test/test-000001.tar": "54277747fb8c50a48a855cfa43efcdc3eb73e4a5e7f1db77255f797eb0e10b99",
    "train/train-000000.tar": "ce085c87c79dbeeee3d8b5997306e93c5a9a8d4dc6d5db436f34f1a9e5f2b034",
    "twin/test/test-000000.tar": "fdb5b6fa5ebba938e7337314c310f7d10d2fa946dbea985df1a0604cb3e6336d",
    "twin/test/test-000001.tar": "05f0d670ba85ecfec8038ab0e5bf7027d4041f0967e5f4bd13d36e486c00277f",
    "twin/train/train-000000.tar": "6fc162deb0cf7a2f505298d45dd11e0687f92d9e652802f08e6ad4803925b405",
    "twin/unlabeled/unlabeled-000000.tar": "491a29590ddc279487418d635cb70da9ed5cf1eea8edcbe781f345cf26c1f10d",
    "twin/val/val-000000.tar": "0330f8777f18c5f217b82e5ee8c880c79830700c0d0e4218b713eb1a1c011c99",
    "unlabeled/unlabeled-000000.tar": "288079968c19589a2a42405cac859df2a4433ef7d1e08c200f939e438ce5a37f",
    "val/val-000000.tar": "5292ce4c8387c102e6c29d0455a24e47fd13a76ee5886a5a15384e046ef6af68",
}
_SHEETS = {
    "dataset.json": "007d3c236517bd649080c7ea2b6e39f328e31d26d88c94aeb84224c105a853f6",
    "twin/dataset.json": "6e5efe024f663c0062c0e1dad3bdaae981c9e2846d43891f32fb0ce509428e8b",
}
_CONTENT = "962f7dde63e632dd9f6674487916d7c5fc255a32ae8d771aaf223b558baefeda"
_PNG_PROBE = "70ea786bb77032363fbcd75a2f38da74d2fcb03168b77d1375a59de1ff73e711"


def _digests(root: Path) -> Tuple[Dict[str, str], Dict[str, str], str]:
    """(tar file -> sha256, datasheet -> sha256 without its clock fields, sha256 of every member in order with the
    PNGs decoded to pixels)."""
    tars = {f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*.tar"))}
    sheets = {}
    for f in sorted(root.rglob("dataset.json")):
        d = json.loads(f.read_text())
        d.pop("created")
        d.pop("generation_seconds")
        sheets[f.relative_to(root).as_posix()] = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.tar")):
        with tarfile.open(f) as t:
            for m in t.getmembers():
                b = t.extractfile(m).read()
                if m.name.endswith(".png"):
                    b = np.asarray(Image.open(io.BytesIO(b))).tobytes()
                h.update(m.name.encode() + b"\0" + b)
    return tars, sheets, h.hexdigest()


def _samples(root: Path, splits=("train", "val", "test", "unlabeled")) -> Dict[str, Dict[str, Any]]:
    out = {}
    for split in splits:
        urls = [dict(url=str(u)) for u in sorted((root / split).glob("*.tar"))]
        for s in wds.tarfile_samples(urls):
            out[s["__key__"]] = {"meta": json.loads(s["json"]), "png": s["png"], "mask": s.get("mask.png")}
    return out


def test_one_image_per_patient_is_unchanged_bit_for_bit(tmp_path):
    root = tmp_path / "k1"
    write_synth(str(root), SynthParams(n=48, image_size=16, seed=3), twin=True, shard_size=16, unlabeled=5)
    tars, sheets, content = _digests(root)
    assert sheets == _SHEETS
    assert content == _CONTENT
    if hashlib.sha256(_png(np.arange(256, dtype=np.uint8).reshape(16, 16))).hexdigest() == _PNG_PROBE:
        assert tars == _TARS
    else:  # another PNG encoder: the decoded content above is the check
        assert sorted(tars) == sorted(_TARS)
    sheet = read_datasheet(root)
    assert PATIENT not in sheet["attributes"] and "images_per_patient" not in sheet["params"]
    assert all(PATIENT not in s["meta"]["attrs"] for s in _samples(root).values())


def test_three_images_per_patient(tmp_path):
    k, n = 3, 40
    root = tmp_path / "k3"
    write_synth(str(root), SynthParams(n=n, image_size=24, seed=1, images_per_patient=k), twin=True, shard_size=25,
                unlabeled=4, val_frac=0.25, test_frac=0.25)
    got = _samples(root)
    assert len(got) == (n + 4) * k
    by_patient = defaultdict(list)
    for key, s in got.items():
        by_patient[s["meta"]["attrs"][PATIENT]].append(key)
    assert len(by_patient) == n + 4
    for pid, keys in by_patient.items():
        assert sorted(keys) == [f"{pid}_{v}" for v in range(k)]
        metas = [got[key]["meta"] for key in keys]
        assert all(m == metas[0] for m in metas), pid  # attrs (age too), label and split: the subject's
        pixels = [decode_array(got[key]["png"], "png") for key in keys]
        for a in range(k):
            for b in range(a + 1, k):
                assert not np.array_equal(pixels[a], pixels[b]), (pid, a, b)
        labelled = metas[0]["label"] != -1
        assert all((got[key]["mask"] is not None) == labelled for key in keys)
    sheet = read_datasheet(root)
    assert sheet["samples"] == (n + 4) * k and sheet["params"]["images_per_patient"] == k
    assert f"{k} images per patient" in sheet["split_design"]
    twin = _samples(root / "twin")  # the twin: same subjects, follow-ups and draws, no bias effect
    assert twin.keys() == got.keys()
    for key, s in got.items():
        same = np.array_equal(decode_array(s["png"], "png"), decode_array(twin[key]["png"], "png"))
        assert same == (s["meta"]["attrs"]["shortcut"] == "0"), key


def test_no_patient_in_two_splits_and_splits_drawn_per_subject(tmp_path):
    """Each patient's split is the one its subject gets with one image each (stratified per subject as before)."""
    one, three = tmp_path / "k1", tmp_path / "k3"
    write_synth(str(one), SynthParams(n=60, image_size=16, seed=5))
    write_synth(str(three), SynthParams(n=60, image_size=16, seed=5, images_per_patient=3))
    subject_split = {key: s["meta"]["split"] for key, s in _samples(one).items()}
    patient_splits = defaultdict(set)
    for s in _samples(three).values():
        patient_splits[s["meta"]["attrs"][PATIENT]].add(s["meta"]["split"])
    assert all(len(v) == 1 for v in patient_splits.values())
    assert {pid: v.pop() for pid, v in patient_splits.items()} == subject_split
    counts = {sp: read_datasheet(three)["splits"][sp]["samples"] for sp in ("train", "val", "test")}
    assert counts == {sp: 3 * read_datasheet(one)["splits"][sp]["samples"] for sp in ("train", "val", "test")}


def test_follow_ups_share_the_anatomy():
    """A subject's follow-ups look more alike than two subjects with the same attributes do."""
    k, n = 4, 64
    p = SynthParams(n=n, image_size=32, seed=2, site_frac=0.0, images_per_patient=k)
    s = subjects(p)
    imgs = render(p, s).astype(np.float32).reshape(n, k, -1)
    within = np.abs(imgs[:, 1:] - imgs[:, :1]).mean()
    same = [(i, j) for i in range(n) for j in range(i + 1, n)
            if s["label"][i] == s["label"][j] and s["shortcut"][i] == s["shortcut"][j]]
    between = np.mean([np.abs(imgs[i, 0] - imgs[j, 0]).mean() for i, j in same])
    assert within < 0.7 * between, (within, between)


@pytest.mark.parametrize("k", [0, -1, MAX_IMAGES_PER_PATIENT + 1, 1000])
def test_bad_images_per_patient_is_named(tmp_path, capsys, k):
    with pytest.raises(ValueError, match="images_per_patient"):
        SynthParams(n=10, images_per_patient=k).validate()
    assert main(["data", "synth", str(tmp_path / "x"), "n=10", "image_size=16", f"images_per_patient={k}"]) == 2
    err = capsys.readouterr().err
    assert f"images_per_patient={k}" in err and f"1..{MAX_IMAGES_PER_PATIENT}" in err
    assert not (tmp_path / "x").exists()


def test_images_in_all_are_bounded():
    with pytest.raises(ValueError, match="images_per_patient=64"):
        SynthParams(n=1_000_000, images_per_patient=64).validate()
