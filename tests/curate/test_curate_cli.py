"""`agglom curate`: proxy groups from a tiny teacher recover the rare `site` subgroup, the sidecar round-trips
into the data layer as attrs.proxy, and planted duplicates are found."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from agglom.cli import main  # noqa: E402

N_DUP = 4


def _plant_duplicates(root: Path, n: int) -> list:
    """Copy the first `n` training samples into a new shard under new keys; returns the new keys."""
    src = sorted((root / "train").glob("*.tar"))[0]
    members = {}
    with tarfile.open(src) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            members.setdefault(key, {})[ext] = tf.extractfile(m).read()
    keys = sorted(members)[:n]
    new = []
    with tarfile.open(root / "train" / "train-000099.tar", "w") as out:
        for k in keys:
            nk = f"dup-{k}"
            new.append(nk)
            for ext, data in sorted(members[k].items()):
                info = tarfile.TarInfo(f"{nk}.{ext}")
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
    return new


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from agglom.data.synth import SynthParams, write_synth

    root = tmp_path_factory.mktemp("curate") / "synth"
    write_synth(str(root), SynthParams(n=600, seed=0), val_frac=0.15, test_frac=0.15)  # 8 % site B (default)
    planted = _plant_duplicates(root, N_DUP)
    return root, planted


@pytest.fixture(scope="module")
def curated(synth, tmp_path_factory):
    root, planted = synth
    out = tmp_path_factory.mktemp("curate_out") / "proxy_groups.json"
    code = main(["curate", str(root), "teacher=tiny-dinov2", "k=2", "num_workers=0", "dedup_threshold=0.999",
                 f"out={out}", "progress=off"])
    assert code == 0
    return root, planted, out


def test_proxy_groups_recover_site(curated, capsys):
    root, planted, out = curated
    report = json.loads((out.parent / "curate_report.json").read_text())
    ari = report["validation"]["site"]["ari"]
    print(f"site ARI = {ari:.3f}, NMI = {report['validation']['site']['nmi']:.3f}")
    assert ari >= 0.5, report["validation"]
    assert report["best_match"]["attr"] == "site"
    assert len(report["sizes"]) == 2
    md = (out.parent / "curate_report.md").read_text()
    assert "best match: `site`" in md and "| site |" in md
    # every sample embedded exactly once: the datasheet's 600 plus the planted copies
    assert report["n_embedded"] == 600 + N_DUP
    assert report["n_assigned"] == 600 + N_DUP


def test_dedup_lists_planted_duplicates(curated):
    root, planted, out = curated
    report = json.loads((out.parent / "curate_report.json").read_text())
    assert sorted(report["dedup"]["removed"]) == sorted(planted)
    assert report["n_clustered"] == 600
    # a removed copy takes the group of the sample it duplicates
    from agglom.data.sidecars import load_sidecars

    table = load_sidecars([out])
    for k in planted:
        assert table[k]["proxy"] == table[k[len("dup-"):]]["proxy"]


def test_sidecar_round_trips_into_the_data_layer(curated):
    from omegaconf import OmegaConf

    from agglom.config.schema import Recipe
    from agglom.curate.sidecar import SIDECAR_SCHEMA
    from agglom.data.readers import eval_loader
    from agglom.data.sidecars import load_sidecars

    root, planted, out = curated
    raw = json.loads(out.read_text())
    assert raw["schema"] == SIDECAR_SCHEMA and raw["attr"] == "proxy" and set(raw["groups"]) == {"c0", "c1"}
    table = load_sidecars([out])
    cfg = OmegaConf.structured(Recipe)
    cfg.data.root = str(root)
    cfg.data.num_workers = 0
    cfg.data.sidecars = [str(out)]
    cfg.groups.by = "proxy"
    seen = 0
    for split in ("train", "val", "test"):
        loader = eval_loader(cfg, split)
        names = loader.group_names
        assert names[:2] == ["c0", "c1"] and names[-1] == "unknown"
        for batch in loader:
            for key, attrs, g in zip(batch["key"], batch["attrs"], batch["group"].tolist()):
                assert attrs["proxy"] == table[key]["proxy"]
                assert names[g] == attrs["proxy"]
                seen += 1
    assert seen == 600 + N_DUP


@pytest.mark.parametrize("method", ["per_class", "hierarchical"])
def test_other_methods_run(synth, tmp_path, method, capsys):
    root, _ = synth
    out = tmp_path / "p.json"
    code = main(["curate", str(root), "teacher=tiny-clip", "splits=[val]", "k=2", "num_workers=0",
                 f"method={method}", "n_resample=2", f"out={out}", "progress=off"])
    assert code == 0
    report = json.loads((tmp_path / "curate_report.json").read_text())
    assert report["method"] == method and report["n_embedded"] == report["n_clustered"] > 0
    assert "| group | size |" in capsys.readouterr().out
    if method == "per_class":
        assert all(name.startswith(("y0c", "y1c")) for name in report["sizes"])


def test_bad_arguments_exit_2(synth, capsys):
    root, _ = synth
    assert main(["curate", str(root)]) == 2  # no encoder
    assert main(["curate", str(root), "teacher=tiny-clip", "run=somewhere"]) == 2
    assert main(["curate", str(root), "teacher=tiny-clip", "method=spectral"]) == 2
    assert "exactly one encoder" in capsys.readouterr().err
