"""Label-free distillation on shards as img2dataset/open_clip write them (an image, a caption, a json with url and
size; no label, no attributes, no dataset.json): read without rewriting, distilled without groups, curated into proxy
groups, trained with GroupDRO on those and exported; a stray data/synth in the working directory is not used; what
needs labels says so up front."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from agglom.cli import main
from agglom.config.load import load_config
from agglom.config.schema import Recipe
from agglom.data.readers import eval_loader, train_loader
from agglom.data.shards import data_home, dataset_datasheet


def _jpg(rng: np.random.Generator, bright: bool) -> bytes:
    base = 200 if bright else 40
    arr = np.clip(rng.normal(base, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture()
def web_shards(tmp_path, monkeypatch):
    """3 shards x 16 samples written the img2dataset way, and a stray labelled data/synth in the working dir."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "web"
    folder.mkdir()
    i = 0
    for s in range(3):
        with wds.TarWriter(str(folder / f"{s:05d}.tar"), encoder=False) as t:
            for _ in range(16):
                key = f"{i:09d}"
                t.write({"__key__": key, "jpg": _jpg(rng, i % 2 == 0), "txt": f"a photo number {i}".encode(),
                         "json": json.dumps({"url": f"https://example.org/{i}.jpg", "caption": f"a photo {i}",
                                             "key": key, "status": "success", "width": 24, "height": 24}).encode()})
                i += 1
    stray = tmp_path / "data" / "synth"
    stray.mkdir(parents=True)
    (stray / "dataset.json").write_text(json.dumps({"label": {"type": "binary", "num_classes": 2},
                                                    "attributes": {"site": {"type": "categorical",
                                                                            "values": ["A", "B"]}}}))
    monkeypatch.chdir(tmp_path)
    return str(folder / "{00000..00002}.tar")


def _train_args(shards: str, name: str, *over: str) -> list:
    return ["train", f"name={name}", "out_dir=runs", f"data.shards={shards}", "data.image_size=16",
            "data.batch_size=8", "data.num_workers=0", "data.epoch_samples=32", "teachers=[{name: tiny-clip}]",
            "student.model_args={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}", "heads.stats_samples=16",
            "optim.steps=4", "optim.warmup_steps=1", "log.progress=off", "log.checkpoint_interval=4", *over]


def test_web_shards_read_label_free_and_the_stray_datasheet_is_ignored(web_shards):
    cfg = load_config(Recipe, [f"data.shards={web_shards}", "data.image_size=16", "data.num_workers=0",
                               "groups.by=none", "student.model_args={patch_size: 8}"])
    assert data_home(cfg) == Path(web_shards).parent
    assert dataset_datasheet(cfg) is None  # not data/synth's
    loader = eval_loader(cfg, "train")
    labels = [v for b in loader for v in b["label"].tolist()]
    assert len(labels) == 48 and set(labels) == {-1}
    assert loader.stats.total == 0 and loader.stats.noted == {"no_label": 48}
    assert loader.group_names == ["all", "unknown"]
    batch = next(iter(train_loader(cfg)))
    assert batch["image"].shape == (32, 3, 16, 16) and set(batch["group"].tolist()) == {0}


def test_what_needs_groups_or_labels_says_so_up_front(web_shards, capsys):
    assert main(_train_args(web_shards, "dro", "groups.by=none", "objective.group=groupdro")) == 2
    assert "objective.group='groupdro' needs groups" in capsys.readouterr().err
    assert main(_train_args(web_shards, "site")) == 2  # the default groups.by=site: no such attribute here
    assert "groups.by=none trains without groups" in capsys.readouterr().err
    assert main(_train_args(web_shards, "audit", "groups.by=none", "objective.route_by_audit=1")) == 2
    assert "route_by_audit needs labelled" in capsys.readouterr().err
    assert not Path("runs").exists()


@pytest.mark.slow
def test_web_shards_distil_curate_groupdro_and_export(web_shards, capsys):
    assert main(_train_args(web_shards, "plain", "groups.by=none")) == 0
    assert json.loads(Path("runs/plain/groups.json").read_text())["names"] == ["all", "unknown"]
    assert json.loads(Path("runs/plain/run.json").read_text())["noted"]["no_label"] > 0

    assert main(["curate", f"shards={web_shards}", "teacher=tiny-clip", "k=2", "image_size=16", "num_workers=0",
                 "progress=off"]) == 0
    sidecar = Path("web/proxy_groups.json")  # beside the shards, not in the stray data/synth
    values = json.loads(sidecar.read_text())["values"]
    assert len(values) == 48 and set(values.values()) == {"c0", "c1"}

    assert main(_train_args(web_shards, "dro", f"data.sidecars=[{sidecar}]", "groups.by=proxy",
                            "objective.group=groupdro")) == 0
    assert json.loads(Path("runs/dro/groups.json").read_text())["names"] == ["c0", "c1", "unknown"]
    metrics = [json.loads(x) for x in Path("runs/dro/metrics.jsonl").read_text().splitlines()]
    assert any("group/c1" in m for m in metrics)

    assert main(["export", "runs/dro"]) == 0
    assert Path("runs/dro/export/model.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", "runs/dro", "num_workers=0"]) == 2  # a supervised probe needs labels: said, not crashed
    assert "have no label" in capsys.readouterr().err
