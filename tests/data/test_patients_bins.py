"""Numeric attributes in bins: `agglom data pack attr_bins={Age: [...]}` records the edges in the datasheet and
counts images and patients per split x bin (with the values outside every bin counted by reason), the samples keep
their raw values, the bins are the groups `groups.specs` makes of the same edges, bad bins are refused before
anything is written, and `agglom data info` prints the bins — or, without them, a numeric attribute with many
values as its min / median / max (agglom/data/binning.py, agglom/data/writer.py)."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
from PIL import Image

from agglom.cli import main
from agglom.data.groups import group_labels, group_names
from agglom.data.writer import read_datasheet

EDGES = [0, 40, 60, 80, 200]
BINS = ["[0,40)", "[40,60)", "[60,80)", "[80,200)"]
# patient p's age at its first image; each of its 1 + p % 3 images is a year older (patient 2: 59, 60, 61 crosses
# into the next bin); 200 is past the last bin (which is half-open), 250 and -3 are out of range, "" is missing
FIRST_AGES = [15, 35, 59, 45, 60, 75, 79, 80, 95, 199, 200, 250, -3, ""]


def _write_csv(tmp_path: Path, ages: Sequence[Any], studies: Optional[Sequence[int]] = None, extra: str = "",
               name: str = "train.csv") -> Path:
    """A CheXpert-style CSV: patient p has ``studies[p]`` images (default 1 + p % 3), aged ``ages[p]`` at the first
    and a year older at each next one (a blank age stays blank); label alternates; ``extra``: a column ``Grade``
    (p % 3) when ``"grade"``."""
    header = "Path,No Finding,Sex,Age,patient_id" + (",Grade" if extra == "grade" else "")
    rows = []
    for p, age in enumerate(ages):
        for st in range((studies[p] if studies else 1 + p % 3)):
            rel = f"train/patient{p:05d}/study{st + 1}/view1_frontal.png"
            f = tmp_path / rel
            if not f.exists():
                f.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((8, 8), (p * 7 + st) % 256, np.uint8)).save(f)
            a = "" if age == "" else age + st
            rows.append(f"{rel},{(p + st) % 2},{'Female' if p % 2 else 'Male'},{a},patient{p:05d}"
                        + (f",{p % 3}" if extra == "grade" else ""))
    path = tmp_path / name
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _pack(out: Path, csv: Path, *extra: str) -> int:
    return main(["data", "pack", f"out={out}", f"csv={csv}", "path_col=Path", "label_cols=[No Finding]",
                 "attr_cols=[Sex,Age]", "patient_col=patient_id", "val_frac=0.25", "test_frac=0.25", *extra])


def _samples(root: Path) -> List[Tuple[str, Dict[str, Any]]]:
    """(split folder, json meta) of every sample, read straight from the tars."""
    import webdataset as wds

    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for s in wds.tarfile_samples([dict(url=str(u)) for u in sorted(d.glob("*.tar"))]):
            out.append((d.name, json.loads(s["json"])))
    return out


def _bin(value: Any, edges: Sequence[float] = EDGES) -> Tuple[str, Optional[str]]:
    """(bin, reason when in none): written out here, apart from the code under test."""
    if value is None or value == "":
        return "unknown", "missing"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "unknown", "not_numeric"
    for a, b, name in zip(edges[:-1], edges[1:], BINS):
        if a <= value < b:
            return name, None
    return "unknown", "out_of_range"


def test_bins_are_recorded_and_count_images_and_patients_per_split(tmp_path, capsys):
    out = tmp_path / "cxp"
    assert _pack(out, _write_csv(tmp_path, FIRST_AGES), "attr_bins={Age: [0, 40, 60, 80, 200]}") == 0
    sheet = read_datasheet(out)
    assert sheet["params"]["attr_bins"] == {"Age": EDGES}  # the edges as given: 40, not 40.0
    entry = sheet["attribute_bins"]["Age"]
    assert entry["edges"] == EDGES and entry["bins"] == BINS
    images: Dict[str, Counter] = defaultdict(Counter)
    reasons: Dict[str, Counter] = defaultdict(Counter)
    patients: Dict[str, Dict[str, set]] = defaultdict(lambda: defaultdict(set))
    written = _samples(out)
    for split, meta in written:
        name, why = _bin(meta["attrs"].get("Age"))
        images[split][name] += 1
        reasons[split][why] += bool(why)
        patients[split][name].add(meta["attrs"]["patient"])
    splits = ("train", "val", "test")
    for s in splits:
        assert entry["images"][s] == {n: images[s][n] for n in BINS + ["unknown"]}
        assert entry["unknown"][s] == {r: reasons[s][r] for r in ("out_of_range", "not_numeric", "missing")}
        assert entry["patients"][s] == {n: len(patients[s][n]) for n in BINS + ["unknown"]}
        assert sum(entry["images"][s].values()) == sheet["splits"][s]["samples"]  # nothing dropped
    total = Counter()
    for s in splits:
        total.update(entry["unknown"][s])
    # 200, 201; 250, 251, 252; -3: past the bins; the blank patient's 2 images: missing
    assert dict(total) == {"out_of_range": 2 + 3 + 1, "not_numeric": 0, "missing": 2}
    assert sum(sum(entry["images"][s][n] for s in splits) for n in BINS) == len(written) - 8
    # patient 2 is 59, then 60 and 61: it counts in both bins, in the split that holds it
    split2 = next(s for s, m in written if m["attrs"]["patient"] == "patient00002")
    assert entry["patients"][split2]["[40,60)"] >= 1 and entry["patients"][split2]["[60,80)"] >= 1
    # the samples keep their raw values: binning is the datasheet's, not the data's
    ages = sorted((m["attrs"].get("Age") for _, m in written if "Age" in m["attrs"]))
    assert 59 in ages and 61 in ages and 252 in ages and -3 in ages and all(isinstance(a, int) for a in ages)
    assert "Age" in sheet["attributes"] and "values" in sheet["attributes"]["Age"]  # the existing keys stay
    # training's groups from the same edges (groups.specs) are the datasheet's bins, sample for sample
    spec = [{"name": "age_bin", "attr": "Age", "bins": EDGES}]
    names = group_names("age_bin", spec)
    assert names == BINS + ["unknown"]
    for s in splits:
        idx = group_labels("age_bin", [m["attrs"] for sp, m in written if sp == s], spec)
        assert {names[i]: n for i, n in Counter(idx).items()} == {k: v for k, v in entry["images"][s].items() if v}


def test_data_info_prints_the_bins_not_one_row_per_value(tmp_path, capsys):
    out = tmp_path / "cxp"
    assert _pack(out, _write_csv(tmp_path, FIRST_AGES), "attr_bins={Age: [0, 40, 60, 80, 200]}") == 0
    capsys.readouterr()
    assert main(["data", "info", str(out)]) == 0
    shown = capsys.readouterr().out
    lines = shown.splitlines()
    entry = read_datasheet(out)["attribute_bins"]["Age"]
    assert "Age (numeric) in bins [0, 40, 60, 80, 200]" in lines

    def cells(label: str) -> List[int]:
        row = next(ln for ln in lines if ln.startswith(label + " ") or ln == label)
        return [int(c) for c in row[len(label):].split()]

    for name in BINS:
        assert cells(f"  {name}") == [entry["images"][s][name] for s in ("train", "val", "test")]
        assert cells(f"  Age={name}") == [entry["patients"][s][name] for s in ("train", "val", "test")]
    assert cells("  (out of range)") == [entry["unknown"][s]["out_of_range"] for s in ("train", "val", "test")]
    assert sum(cells("  (out of range)")) == 6 and sum(cells("  Age=unknown")) == 4
    assert "(not a number)" not in shown  # printed only when some value is not a number
    assert not any(ln.startswith("  15 ") or ln.startswith("  59 ") for ln in lines)  # no row per age


def test_values_that_are_not_numbers_are_counted_not_dropped(tmp_path, capsys):
    out = tmp_path / "cxp"
    csv = _write_csv(tmp_path, [30, 50, 70, 90])
    csv.write_text(csv.read_text().replace(",90,", ",90+,", 1))  # one image's age written as text
    assert _pack(out, csv, "attr_bins={Age: [0, 40, 60, 80, 200]}") == 0
    entry = read_datasheet(out)["attribute_bins"]["Age"]
    assert sum(entry["unknown"][s]["not_numeric"] for s in entry["unknown"]) == 1
    capsys.readouterr()
    assert main(["data", "info", str(out)]) == 0
    assert "  (not a number)" in capsys.readouterr().out


def test_resplit_keeps_the_source_bins_or_takes_new_ones(tmp_path):
    src = tmp_path / "cxp"
    assert _pack(src, _write_csv(tmp_path, FIRST_AGES), "attr_bins={Age: [0, 40, 60, 80, 200]}") == 0
    assert main(["data", "pack", f"out={tmp_path / 'again'}", f"resplit={src}", "seed=3"]) == 0
    again = read_datasheet(tmp_path / "again")
    assert again["params"]["attr_bins"] == {"Age": EDGES} and again["attribute_bins"]["Age"]["bins"] == BINS
    assert main(["data", "pack", f"out={tmp_path / 'new'}", f"resplit={src}", "attr_bins={Age: [0, 65, 300]}"]) == 0
    new = read_datasheet(tmp_path / "new")
    assert new["params"]["attr_bins"] == {"Age": [0, 65, 300]}
    assert new["attribute_bins"]["Age"]["bins"] == ["[0,65)", "[65,300)"]
    assert sum(new["attribute_bins"]["Age"]["unknown"][s]["out_of_range"] for s in ("train", "val", "test")) == 1  # -3


@pytest.mark.parametrize("bins, expected", [
    ("{Age: [0, 60, 40]}", "strictly increasing"),
    ("{Age: [40]}", "at least 2"),
    ("{Age: []}", "at least 2"),
    ("{Age: [0, .inf]}", "finite"),
    ("{Age: [0, .nan]}", "finite"),
    ("{Age: [0, forty]}", "could not be converted to Float"),
    ("{Agee: [0, 40]}", "no sample has a value of attribute 'Agee' (did you mean Age?); the attributes are: Age, Sex"),
    ("{Sex: [0, 1]}", "no sample holds a number in 'Sex'"),
    ("{patient: [0, 1]}", "is the patient id"),
])
def test_bad_bins_are_refused_and_nothing_is_written(tmp_path, capsys, bins, expected):
    out = tmp_path / "cxp"
    assert _pack(out, _write_csv(tmp_path, FIRST_AGES[:4]), f"attr_bins={bins}") == 2
    err = capsys.readouterr().err
    assert "attr_bins" in err and expected in err and "Traceback" not in err
    assert not out.exists()


def test_bad_edges_are_named_when_pack_runs_without_the_config_check(tmp_path):
    """The CLI checks the option when the config loads; pack itself names the attribute and the wrong edge."""
    from omegaconf import OmegaConf

    from agglom.data.args import PackConfig
    from agglom.data.pack import pack
    from agglom.errors import ConfigError

    cfg = OmegaConf.structured(PackConfig)
    cfg.out, cfg.csv, cfg.path_col = str(tmp_path / "cxp"), str(_write_csv(tmp_path, [30, 50])), "Path"
    cfg.label_cols, cfg.attr_cols = ["No Finding"], ["Age"]
    cfg.attr_bins = {"Age": [0.0, 60.0, 60.0]}
    with pytest.raises(ConfigError, match=r"attr_bins\.Age=\[0, 60, 60\]: the edges must increase strictly "
                                          r"\(60 then 60\)"):
        pack(cfg)
    assert not (tmp_path / "cxp").exists()


def test_data_info_summarises_a_numeric_attribute_with_many_values(tmp_path, capsys):
    out = tmp_path / "cxp"
    ages = [20 + 4 * p for p in range(16)]  # 16 patients, one image each: 16 ages
    csv = _write_csv(tmp_path, ages, studies=[1] * 16, extra="grade")
    assert main(["data", "pack", f"out={out}", f"csv={csv}", "path_col=Path", "label_cols=[No Finding]",
                 "attr_cols=[Sex,Age,Grade]", "patient_col=patient_id", "val_frac=0.25", "test_frac=0.25"]) == 0
    capsys.readouterr()
    assert main(["data", "info", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    sheet = read_datasheet(out)
    age = sheet["attributes"]["Age"]
    assert len(age["values"]) == 16 and "counts" in age and "summary" in age  # dataset.json keeps its keys
    assert "Age (numeric, 16 values)" in lines
    at = lines.index("Age (numeric, 16 values)")
    assert [ln.split()[0] for ln in lines[at + 1:at + 5]] == ["min", "median", "max", "(missing)"]
    for i, stat in enumerate(("min", "median", "max")):
        assert lines[at + 1 + i].split()[1:] == [format(age["summary"][s][stat], "g") for s in ("train", "val",
                                                                                               "test")]
    assert not any(ln.startswith(f"  {a} ") for ln in lines for a in ages)  # no row per age
    # a numeric attribute with few values is still listed value by value
    assert "Grade (numeric)" in lines and lines[lines.index("Grade (numeric)") + 1].startswith("  0 ")
