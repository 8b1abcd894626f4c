"""Patients, not images: `agglom data pack patient_col=` / `patient_from_path=` keep every patient in one split
(CSV pack, folder pack + attrs_csv, `data join` + `pack resplit=`), seeded and independent of row order; one image
per patient gives the image-level split exactly; the datasheet counts patients; attributes that change within a
patient follow `patient_attrs=`; CheXpert/MIMIC paths without a patient column warn; bad options are refused."""
from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agglom.cli import main
from agglom.data.patients import PatientCounter, patient_from_path, patient_split
from agglom.data.splits import grouped_split, stratified_split
from agglom.data.writer import read_datasheet


def _cxp(tmp_path: Path, patients: int = 12, rows_order_seed: int = -1, one_each: bool = False,
         name: str = "train.csv") -> Path:
    """A CheXpert-style CSV: patient p has 1 + p % 3 studies (1 each with ``one_each``); its age grows with the
    study, its sex is blank on patient00004's second study; label alternates."""
    rows = []
    for p in range(1, patients + 1):
        for st in range(1, (1 if one_each else 1 + p % 3) + 1):
            rel = f"train/patient{p:05d}/study{st}/view1_frontal.png"
            f = tmp_path / rel
            if not f.exists():
                f.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((16, 16), (p * 10 + st) % 256, np.uint8)).save(f)
            sex = "" if (p, st) == (4, 2) else ("Female" if p % 2 else "Male")
            rows.append(f"{rel},{(p + st) % 2},{sex},{60 + p + st},patient{p:05d}")
    if rows_order_seed >= 0:
        random.Random(rows_order_seed).shuffle(rows)
    path = tmp_path / name
    path.write_text("Path,No Finding,Sex,Age,patient_id\n" + "\n".join(rows) + "\n")
    return path


def _shards(root: Path) -> dict:
    """key -> (split, json meta, image bytes) read straight from the tars."""
    import webdataset as wds

    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for s in wds.tarfile_samples([dict(url=str(u)) for u in sorted(d.glob("*.tar"))]):
            out[s["__key__"]] = (d.name, json.loads(s["json"]), s["png"])
    return out


def _leaked(root: Path, patient_of=None) -> int:
    """Patients whose images sit in more than one split folder (from the shards; ``patient_of(key, meta)``)."""
    where = defaultdict(set)
    for key, (split, meta, _) in _shards(root).items():
        where[patient_of(key, meta) if patient_of else meta["attrs"]["patient"]].add(split)
    return sum(1 for s in where.values() if len(s) > 1)


def _pack(out: Path, csv: Path, *extra: str) -> int:
    return main(["data", "pack", f"out={out}", f"csv={csv}", "path_col=Path", "label_cols=[No Finding]",
                 "val_frac=0.25", "test_frac=0.25", *extra])


def test_csv_pack_keeps_each_patient_in_one_split_and_counts_patients(tmp_path, capsys):
    csv = _cxp(tmp_path)
    assert _pack(tmp_path / "img", csv, "attr_cols=[Sex,Age]") == 0  # image by image: leaks, and says so
    err = capsys.readouterr().err
    assert "warning: 20 of 24 images share an apparent patient" in err and "patient_col=" in err
    assert _leaked(tmp_path / "img", lambda k, m: patient_from_path(m["source"])) > 0
    out = tmp_path / "cxp"
    assert _pack(out, csv, "patient_col=patient_id", "name=tiny-cxp") == 0
    assert "warning" not in capsys.readouterr().err
    got = _shards(out)
    assert _leaked(out) == 0 and len(got) == 24
    assert all("patient_id" not in m["attrs"] and m["attrs"]["patient"].startswith("patient") for _, m, _ in got.values())
    sheet = read_datasheet(out)
    assert set(sheet["attributes"]) == {"Sex", "Age"}  # the patient is no group attribute
    pt = sheet["patients"]
    assert (pt["patients"], pt["images"], pt["patients_in_two_splits"], pt["images_without_patient"]) == (12, 24, 0, 0)
    for split in ("train", "val", "test"):
        mine = {m["attrs"]["patient"] for s, m, _ in got.values() if s == split}
        assert pt["splits"][split] == {"patients": len(mine), "images": sheet["splits"][split]["samples"],
                                       "images_without_patient": 0}
        assert sum(c["patients"] for c in pt["by_attribute"]["Sex"][split].values()) == len(mine)
    assert "Age" not in pt["by_attribute"]  # 14 ages: binned later, not counted per value
    assert pt["attributes_varying"] == {"Age": 8, "Sex": 1}  # every follow-up ages; one blank sex
    assert sheet["params"]["patients"]["attrs_varying_in_source"] == {"Age": 8, "Sex": 1}
    assert main(["data", "info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "patients in two splits: 0 (of 12)" in shown
    assert "attributes changing within a patient: Age (8 patients), Sex (1 patient)" in shown


def test_patient_split_is_seeded_and_independent_of_row_order(tmp_path):
    runs = {}
    for name, order, seed in (("a", -1, 0), ("b", 3, 0), ("c", -1, 5)):
        csv = _cxp(tmp_path, patients=30, rows_order_seed=order, name=f"{name}.csv")
        assert _pack(tmp_path / name, csv, "patient_col=patient_id", f"seed={seed}") == 0
        runs[name] = {k: s for k, (s, _, _) in _shards(tmp_path / name).items()}
        assert _leaked(tmp_path / name) == 0
    assert runs["a"] == runs["b"]  # the rows shuffled: the same split
    assert runs["a"] != runs["c"]  # another seed: another draw


def test_one_image_per_patient_gives_the_image_level_split_exactly(tmp_path):
    rng = random.Random(1)
    keys = [f"k{i:04d}" for i in range(500)]
    strata = [(str(rng.randint(0, 1)), rng.choice("AB")) for _ in keys]
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    for seed in (0, 7):
        expected = stratified_split(keys, strata, fractions, seed=seed)
        assert grouped_split(keys, [f"p{i}" for i in range(500)], strata, fractions, seed=seed) == expected
        assert patient_split(keys, [f"p{i}" for i in range(500)], strata, fractions, seed=seed) == expected
        assert patient_split(keys, [None] * 500, strata, fractions, seed=seed) == expected
    csv = _cxp(tmp_path, patients=40, one_each=True)
    assert _pack(tmp_path / "plain", csv, "attr_cols=[Sex]", "stratify=[Sex]") == 0
    assert _pack(tmp_path / "pat", csv, "attr_cols=[Sex]", "stratify=[Sex]", "patient_col=patient_id") == 0
    plain, pat = _shards(tmp_path / "plain"), _shards(tmp_path / "pat")
    assert {k: v[0] for k, v in plain.items()} == {k: v[0] for k, v in pat.items()}
    assert all(plain[k][2] == pat[k][2] for k in plain)  # the same images, byte for byte
    from agglom.data.pack import make_key  # and the image-level pack is the plain stratified draw it always was

    sheet = read_datasheet(tmp_path / "plain")
    rows = [r.split(",") for r in csv.read_text().splitlines()[1:]]
    old = stratified_split([make_key(r[0]) for r in rows], [(r[1], r[2]) for r in rows],
                           {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)
    assert {k: v[0] for k, v in plain.items()} == old and "patients" not in sheet


def _folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for c in ("healthy", "sick"):
        (src / c).mkdir(parents=True)
        for i in range(16):
            Image.fromarray(np.full((16, 16), i * 9, np.uint8)).save(src / c / f"{c}_{i:02d}.png")
    rows = ["file,sex,patient_id"] + [f"{c}_{i:02d}.png,{'FM'[i % 2]},P{i // 4}{c[0]}" for c in ("healthy", "sick")
                                      for i in range(16)]
    (tmp_path / "demo.csv").write_text("\n".join(rows) + "\n")
    return src


def test_folder_pack_with_an_attribute_table_keeps_patients_whole(tmp_path):
    src = _folder(tmp_path)
    table = tmp_path / "demo.csv"
    out = tmp_path / "f"
    assert main(["data", "pack", f"out={out}", f"src={src}", f"attrs_csv={table}", "patient_col=patient_id",
                 "val_frac=0.25", "test_frac=0.25"]) == 0
    got = _shards(out)
    assert _leaked(out) == 0 and len(got) == 32
    assert all(set(m["attrs"]) == {"sex", "patient"} for _, m, _ in got.values())
    assert read_datasheet(out)["patients"]["patients"] == 8
    also = tmp_path / "g"  # asked for as an attribute too: then it is one, under its own name
    assert main(["data", "pack", f"out={also}", f"src={src}", f"attrs_csv={table}", "patient_col=patient_id",
                 "attr_cols=[patient_id]"]) == 0
    assert "patient_id" in read_datasheet(also)["attributes"]


def test_join_counts_leaked_patients_and_resplit_removes_them(tmp_path, capsys):
    csv = _cxp(tmp_path, patients=20)
    old = tmp_path / "old"
    assert _pack(old, csv, "attr_cols=[Sex,Age]") == 0
    leaked = _leaked(old, lambda k, m: patient_from_path(m["source"]))
    assert leaked > 0
    capsys.readouterr()
    assert main(["data", "join", str(old), f"csv={csv}", "on=Path", "patient_col=patient_id", "attr_cols=[Sex]"]) == 0
    said = capsys.readouterr().out
    sidecar = old / "train_attrs.json"
    assert f"patients: 20, in two splits of these shards: {leaked}" in said and f"patient_sidecar={sidecar}" in said
    side = json.loads(sidecar.read_text())["samples"]
    assert all("patient" in v and set(v) <= {"Sex", "patient"} for v in side.values())
    new = tmp_path / "new"
    assert main(["data", "pack", f"out={new}", f"resplit={old}", f"patient_sidecar={sidecar}", "val_frac=0.25",
                 "test_frac=0.25"]) == 0
    before, after = _shards(old), _shards(new)
    assert _leaked(new) == 0 and set(before) == set(after)
    assert all(before[k][2] == after[k][2] and before[k][1]["label"] == after[k][1]["label"] for k in before)
    sheet = read_datasheet(new)
    assert sheet["patients"]["patients_in_two_splits"] == 0 and sheet["params"]["resplit_from"] == str(old.resolve())
    same = tmp_path / "direct"  # the resplit draws what a patient-level pack of the same rows draws
    assert _pack(same, csv, "attr_cols=[Sex,Age]", "patient_col=patient_id") == 0
    assert {k: v[0] for k, v in _shards(same).items()} == {k: v[0] for k, v in after.items()}
    assert main(["data", "pack", f"out={tmp_path / 'bypath'}", f"resplit={old}", "patient_from_path=true"]) == 0
    assert _leaked(tmp_path / "bypath") == 0
    capsys.readouterr()
    assert main(["data", "join", str(new), f"csv={csv}", "on=Path", "patient_col=patient_id",
                 f"out={tmp_path / 'again.json'}"]) == 0
    assert "in two splits of these shards: 0" in capsys.readouterr().out


def test_split_col_that_divides_a_patient_is_refused(tmp_path, capsys):
    csv = _cxp(tmp_path, patients=6)
    lines = csv.read_text().splitlines()
    split = ["train" if "patient00002/study2" in ln else ("train", "val", "test")[int(ln.split("patient")[1][:5]) % 3]
             for ln in lines[1:]]  # patient p in split p % 3 (patient00002: test), but patient00002's study2 in train
    csv.write_text("\n".join([lines[0] + ",fold"] + [f"{ln},{s}" for ln, s in zip(lines[1:], split)]) + "\n")
    assert _pack(tmp_path / "o", csv, "patient_col=patient_id", "split_col=fold") == 2
    err = capsys.readouterr().err
    assert "split_col='fold' puts 1 patient(s) in two splits (e.g. patient 'patient00002' in test, train)" in err and "leave split_col out" in err
    assert not (tmp_path / "o").exists()
    assert _pack(tmp_path / "o", csv, "split_col=fold", "attr_cols=[Sex]") == 0  # no patients named: as before


def test_chexpert_and_mimic_paths(tmp_path, capsys):
    assert patient_from_path("CheXpert-v1.0/train/patient00042/study3/view1_frontal.jpg") == "patient00042"
    assert patient_from_path(None, "train_patient00042_study3_view1_frontal") == "patient00042"
    assert patient_from_path("files/p10/p10000032/s50414267/02aa804e.jpg") == "p10000032"
    assert patient_from_path("images/patientology/x.png") is None and patient_from_path("p1/s2.png") is None
    src = tmp_path / "mimic"
    for p, studies in ((10000032, 3), (10000033, 1), (10000034, 2)):
        for s in range(studies):
            f = src / ("sick" if s % 2 else "well") / "p10" / f"p{p}" / f"s5000{s}" / "img.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), s * 40, np.uint8)).save(f)
    assert main(["data", "pack", f"out={tmp_path / 'a'}", f"src={src}"]) == 0
    assert "warning: 5 of 6 images share an apparent patient" in capsys.readouterr().err
    assert main(["data", "pack", f"out={tmp_path / 'b'}", f"src={src}", "patient_from_path=true"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert _leaked(tmp_path / "b") == 0 and read_datasheet(tmp_path / "b")["patients"]["patients"] == 3


def test_attributes_that_change_within_a_patient(tmp_path, capsys):
    csv = _cxp(tmp_path)
    assert _pack(tmp_path / "first", csv, "patient_col=patient_id", "patient_attrs=first") == 0
    assert "Age: 8 patients, Sex: 1 patient); patient_attrs=first" in capsys.readouterr().out
    got = _shards(tmp_path / "first")
    by = defaultdict(list)
    for _, m, _ in got.values():
        by[m["attrs"]["patient"]].append(m["attrs"])
    assert by["patient00004"] == [{"patient": "patient00004", "Sex": "Male", "Age": 65}] * 2  # study1's values
    sheet = read_datasheet(tmp_path / "first")
    assert sheet["patients"]["attributes_varying"] == {}  # as written
    assert sheet["params"]["patients"]["attrs_varying_in_source"] == {"Age": 8, "Sex": 1}  # as found
    assert _pack(tmp_path / "no", csv, "patient_col=patient_id", "patient_attrs=refuse") == 2
    err = capsys.readouterr().err
    assert "patient_attrs=refuse" in err and "Age: 8, Sex: 1" in err and "patient 'patient00001' has Age = 62, 63" in err
    c = PatientCounter()
    for split, attrs in (("train", {"patient": "a", "sex": "F"}), ("train", {"patient": "a"}),
                         ("test", {"patient": "b", "sex": "M"}), ("test", {"sex": "M"})):
        c.add(split, attrs)
    sec = c.section(["train", "test"], {"sex": {"type": "categorical", "values": ["F", "M"]}})
    assert sec["attributes_varying"] == {"sex": 1} and sec["images_without_patient"] == 1
    assert sec["by_attribute"]["sex"]["test"] == {"M": {"patients": 1, "images": 1}}


@pytest.mark.parametrize("args, message", [
    (["patient_attrs=sometimes"], "patient_attrs='sometimes': choose one of per_image, first, refuse"),
    (["patient_column=patient_id"], "unknown key 'patient_column'"),
    (["patient_col=nope"], "no column 'nope'"),
    (["patient_col=patient_id", "patient_from_path=true"], "not both"),
    (["patient_sidecar=x.json"], "use it with resplit=DATASET"),
    (["patient_attrs=first"], "there are no patients to apply it to"),
    (["patient_col=Sex", "resplit=somewhere"], "resplit= rewrites existing shards: csv= belong to packing images"),
])
def test_bad_patient_options_are_refused(tmp_path, capsys, args, message):
    csv = _cxp(tmp_path, patients=4)
    assert _pack(tmp_path / "o", csv, *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_more_refusals(tmp_path, capsys):
    src = _folder(tmp_path)
    assert main(["data", "pack", f"out={tmp_path / 'o'}", f"src={src}", "patient_col=patient_id"]) == 2
    assert "give attrs_csv=FILE too" in capsys.readouterr().err
    reserved = tmp_path / "r.csv"
    reserved.write_text("Path,No Finding,patient\n" + "train/patient00001/study1/view1_frontal.png,1,x\n")
    _cxp(tmp_path, patients=1)
    assert _pack(tmp_path / "o", reserved) == 2
    assert "column 'patient' is reserved for the patient id; give patient_col=patient" in capsys.readouterr().err
    assert _pack(tmp_path / "o", reserved, "patient_col=patient") == 0
    assert main(["data", "pack", f"out={tmp_path / 'p'}", f"resplit={tmp_path / 'o'}", f"src={src}"]) == 2
    assert "src= belong to packing images" in capsys.readouterr().err
    assert main(["data", "pack", f"out={tmp_path / 'o'}", f"resplit={tmp_path / 'o'}", "force=true"]) == 2
    assert "write the new split to another folder" in capsys.readouterr().err
    assert main(["data", "pack", f"out={tmp_path / 'q'}", f"resplit={tmp_path / 'o'}", "patient_col=nope"]) == 2
    assert "no image has a patient id in column 'nope'" in capsys.readouterr().err
