"""Attribute tables joined onto images: a folder pack with a demographics CSV keyed by file name, and a CSV joined
onto shards that already exist (as a sidecar, matched by source file or by sample key)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from agglom.cli import main
from agglom.config.load import load_config
from agglom.config.schema import Recipe
from agglom.data.readers import eval_loader
from agglom.data.writer import read_datasheet


def _folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for c in ("healthy", "sick"):
        (src / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(src / c / f"{c}_{i:02d}.png")
    return src


def _table(tmp_path: Path, column: str, value) -> Path:
    """sex/site for every image but healthy_00, plus a row for an image that does not exist."""
    rows = [f"{column},sex,site"]
    for c in ("healthy", "sick"):
        for i in range(12):
            if (c, i) != ("healthy", 0):
                rows.append(f"{value(c, i)},{'FM'[i % 2]},{'AB'[(i // 2) % 2]}")
    rows.append(f"{value('ghost', 99)},F,A")
    path = tmp_path / "demographics.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_folder_pack_joins_an_attribute_table_on_file_names(tmp_path, capsys):
    src = _folder(tmp_path)
    table = _table(tmp_path, "file", lambda c, i: f"{c}_{i:02d}.png")
    out = tmp_path / "packed"
    assert main(["data", "pack", f"out={out}", f"src={src}", f"attrs_csv={table}", "attrs_on=file",
                 "stratify=[site]"]) == 0
    assert "23 images matched, 1 without a row, 1 rows without an image" in capsys.readouterr().out
    sheet = read_datasheet(out)
    assert set(sheet["attributes"]) >= {"sex", "site"}
    n_sex = sum(sum(v.values()) for v in sheet["attributes"]["sex"]["counts"].values())
    assert n_sex == 23  # healthy_00 has no row: its sex is missing, not invented
    join = sheet["params"]["attrs_join"]
    assert (join["matched"], join["samples_without_row"], join["rows_without_sample"]) == (23, 1, 1)
    assert join["examples"]["rows_without_sample"] == ["ghost_99.png"]


def test_data_join_makes_a_sidecar_for_existing_shards(tmp_path, capsys):
    src = _folder(tmp_path)
    out = tmp_path / "packed"
    assert main(["data", "pack", f"out={out}", f"src={src}"]) == 0  # no attributes in the shards
    table = _table(tmp_path, "image", lambda c, i: f"{c}_{i:02d}")  # keyed by stem
    capsys.readouterr()
    assert main(["data", "join", str(out), f"csv={table}", "on=image"]) == 0
    assert "23 samples matched, 1 without a row, 1 rows without a sample" in capsys.readouterr().out
    sidecar = out / "demographics_attrs.json"
    assert len(json.loads(sidecar.read_text())["samples"]) == 23
    cfg = load_config(Recipe, [f"data.root={out}", "data.image_size=16", "data.num_workers=0",
                               f"data.sidecars=[{sidecar}]", "groups.by=sex", "student.model_args={patch_size: 8}"])
    loader = eval_loader(cfg, "train")
    assert loader.group_names == ["F", "M", "unknown"]
    seen = {a.get("sex") for b in loader for a in b["attrs"]}
    assert seen <= {"F", "M", None} and {"F", "M"} <= seen


def test_data_join_by_sample_key_and_bad_tables(tmp_path, capsys):
    src = _folder(tmp_path)
    out = tmp_path / "packed"
    assert main(["data", "pack", f"out={out}", f"src={src}"]) == 0
    from agglom.data.join import shard_sources

    cfg = load_config(Recipe, [f"data.root={out}"])
    pairs = shard_sources(cfg, ["train", "val", "test"])
    table = tmp_path / "by_key.csv"
    table.write_text("key,scanner\n" + "".join(f"{k},s{i % 3}\n" for i, (k, _) in enumerate(pairs)))
    assert main(["data", "join", str(out), f"csv={table}", "match=key", f"out={tmp_path / 'scanner.json'}"]) == 0
    assert len(json.loads((tmp_path / "scanner.json").read_text())["samples"]) == len(pairs) == 24
    assert main(["data", "join", str(out), f"csv={table}", "on=nope"]) == 2
    assert "no column 'nope' to join on" in capsys.readouterr().err
    assert main(["data", "join", str(out), f"csv={table}", "match=fuzzy"]) == 2
    assert "match='fuzzy': choose one of auto, key, path, name, stem" in capsys.readouterr().err
