"""`agglom data synth`: configured statistics, the no-bias twin, and the CLI round trip."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import webdataset as wds

from agglom.cli import main
from agglom.data.decode import decode_array
from agglom.data.synth import SynthParams, render, subjects
from agglom.data.writer import read_datasheet


def _read(root):
    out = {}
    for split in ("train", "val", "test"):
        for s in wds.tarfile_samples([dict(url=str(u)) for u in sorted((root / split).glob("*.tar"))]):
            out[s["__key__"]] = (json.loads(s["json"]), s["png"])
    return out


def test_synth_statistics_match_config(synth_root):
    sheet = read_datasheet(synth_root)
    got = _read(synth_root)
    assert len(got) == 240 == sheet["samples"]
    metas = [m for m, _ in got.values()]
    site_b = sum(m["attrs"]["site"] == "B" for m in metas)
    assert site_b == round(240 * 0.08)
    for label, p in ((1, 0.7), (0, 0.3)):
        cls = [m for m in metas if m["label"] == label]
        assert len(cls) == 120
        assert sum(m["attrs"]["shortcut"] == "1" for m in cls) == round(len(cls) * p)
    assert {m["attrs"]["sex"] for m in metas} == {"F", "M"}
    assert all(20 <= m["attrs"]["age"] < 90 for m in metas)
    counts = {s: sheet["splits"][s]["samples"] for s in ("train", "val", "test")}
    assert counts == {"train": 168, "val": 36, "test": 36}
    # stratified: every split has both sites and both shortcut values
    for s in ("train", "val", "test"):
        assert sheet["attributes"]["site"]["counts"][s]["B"] > 0
        assert sheet["attributes"]["shortcut"]["counts"][s]["1"] > 0
    assert sheet["params"]["site_frac"] == 0.08 and sheet["params"]["shortcut_p_disease"] == 0.7
    assert sheet["licence"] and sheet["source"]
    ds = read_datasheet(synth_root / "twin")
    assert ds["params"]["bias_effect_present"] is False and ds["samples"] == 240


def test_twin_differs_only_by_bias_effect(synth_root):
    main_, twin = _read(synth_root), _read(synth_root / "twin")
    assert main_.keys() == twin.keys()
    n_diff = 0
    for k, (meta, png) in main_.items():
        tmeta, tpng = twin[k]
        assert meta == tmeta
        a, b = decode_array(png, "png"), decode_array(tpng, "png")
        if meta["attrs"]["shortcut"] == "1":
            assert not np.array_equal(a, b), k
            n_diff += 1
        else:
            assert np.array_equal(a, b), k
    assert n_diff == 120


@pytest.mark.parametrize("bias", ["morphology", "both"])
def test_bias_kinds_and_effects(bias):
    p = SynthParams(n=64, image_size=32, bias=bias, seed=3)
    s = subjects(p)
    with_b, without = render(p, s, True), render(p, s, False)
    diff = np.abs(with_b.astype(int) - without.astype(int)).reshape(64, -1).max(axis=1)
    assert np.all((diff > 0) == s["shortcut"])
    assert np.array_equal(render(p, s, True), with_b)  # deterministic
    other = render(SynthParams(n=64, image_size=32, bias=bias, seed=4))
    assert not np.array_equal(other, with_b)


def test_site_b_is_a_different_acquisition():
    p = SynthParams(n=400, image_size=32, site_frac=0.25)
    s = subjects(p)
    imgs = render(p, s).astype(np.float32) / 255
    corner = imgs[:, :3, :3].mean(axis=(1, 2))  # background: dark at site A, bright (inverted) at site B
    assert corner[s["site_b"]].min() > 0.6 and corner[~s["site_b"]].max() < 0.2
    disease = imgs[s["label"] & ~s["site_b"]].mean(0) - imgs[~s["label"] & ~s["site_b"]].mean(0)
    assert disease.max() > 0.08  # the lesion is visible on average


def test_age_and_sex_lesion_fade_the_disease_in_their_groups_only():
    base = SynthParams(n=600, image_size=32, site_frac=0.0, seed=5)
    s = subjects(base)
    plain = render(base, s).astype(np.float32)
    faded = render(replace(base, age_lesion=0.6, sex_lesion=0.4), s).astype(np.float32)
    assert np.array_equal(render(replace(base, age_lesion=0.0, sex_lesion=0.0), s), plain.astype(np.uint8))
    assert np.array_equal(faded[~s["label"]], plain[~s["label"]])  # healthy subjects: no lesion, nothing changes
    _, lesions = render(base, s, lesions=True)
    lesion = lesions.astype(bool)

    def contrast(img, sel):  # the lesion's brightness over the rest of the organ, averaged over ``sel``
        return np.mean([img[i][lesion[i]].mean() for i in np.flatnonzero(sel & s["label"]) if lesion[i].any()])

    old, young = s["age"] >= 70, s["age"] < 40
    women, men = ~s["male"], s["male"]
    lost = {k: contrast(plain, sel) - contrast(faded, sel) for k, sel in
            {"old": old, "young": young, "women": women, "men": men}.items()}
    assert lost["old"] > lost["young"] > 0 and lost["women"] > lost["men"]


@pytest.mark.parametrize("bad", [{"age_lesion": 1.0}, {"sex_lesion": -0.1}])
def test_lesion_fades_out_of_range_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SynthParams(n=10, **bad).validate()


def test_cli_round_trip(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "synth", f"out={out}", "n=120", "image_size=24", "site_frac=0.1", "shard_size=50"]) == 0
    text = capsys.readouterr().out
    assert "site" in text and "shortcut" in text and "wrote 120 samples" in text
    sheet = read_datasheet(out)
    # the default splits: a quarter train, a quarter val and half test (the rare groups need a large test split)
    counts = [sheet["splits"][s]["samples"] for s in ("train", "val", "test")]
    assert sum(counts) == 120 and abs(counts[0] - 30) <= 2 and abs(counts[1] - 30) <= 2 and abs(counts[2] - 60) <= 2
    assert sheet["splits"]["train"]["shards"] == 1 and sheet["splits"]["test"]["shards"] == 2
    assert "stratified by label x shortcut x site" in sheet["split_design"] and "splits:" in text
    assert main(["data", "info", str(out)]) == 0
    assert "samples" in capsys.readouterr().out
    assert main(["data", "synth", str(out), "n=120"]) == 2  # exists: refuse without force
    assert "force=true" in capsys.readouterr().err
    assert main(["data", "synth", str(out), "n=60", "force=true", "twin=true", "image_size=24"]) == 0
    assert read_datasheet(out)["samples"] == 60 and read_datasheet(out / "twin")["samples"] == 60
    assert main(["data", "synth", str(tmp_path / "x"), "bias=weird"]) == 2
    assert main(["data", "info", str(tmp_path / "nothing")]) == 2
