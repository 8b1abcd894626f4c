"""`agglom monitor`: an exported student on batches arriving per date against the split it was validated on —
per-group embedding drift, score and proportion shift, AUC where labels arrive — and the alarm's exit code."""
import io
import json
import shutil
import tarfile

import numpy as np
import pytest

from agglom.cli import main
from agglom.monitor.stats import auc_delta, mmd_test, proportion_test


def _synth(root, seed, n, **over):
    from agglom.data.synth import SynthParams, write_synth

    params = SynthParams(n=n, image_size=32, seed=seed, site_frac=0.3, **{k: v for k, v in over.items()
                                                                           if k != "unlabeled"})
    write_synth(str(root), params, shard_size=50, val_frac=0.1, test_frac=0.5, unlabeled=over.get("unlabeled", 0))
    return root


def _recalibrated(src, dst, site="B", gain=0.6):
    """The shards of ``src`` with the images of ``site`` darkened by ``gain`` (a scanner recalibrated at one site)."""
    from PIL import Image

    dst.mkdir(parents=True)
    for tar in sorted(src.glob("*.tar")):
        with tarfile.open(tar) as fin, tarfile.open(dst / tar.name, "w") as fout:
            data = {m.name: fin.extractfile(m).read() for m in fin.getmembers()}
            for name, body in data.items():
                stem, ext = name.split(".", 1)
                if ext == "png" and json.loads(data[f"{stem}.json"])["attrs"]["site"] == site:
                    img = np.asarray(Image.open(io.BytesIO(body)))
                    buf = io.BytesIO()
                    Image.fromarray((img * gain).astype(img.dtype)).save(buf, format="PNG")
                    body = buf.getvalue()
                info = tarfile.TarInfo(name)
                info.size = len(body)
                fout.addfile(info, io.BytesIO(body))
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_tiny_args):
    """A reference dataset (its test split: 200 samples, 30% site B), a tiny student trained on it for 2 steps and
    exported, and three batches: the same distribution (240 new samples), the same samples with site B's images
    darkened, and label-free images."""
    base = tmp_path_factory.mktemp("monitor")
    ref = _synth(base / "ref", 0, 400)
    args = make_tiny_args(base / "runs", ref, "m", 2, **{"teachers": "[{name: tiny-clip}, {name: tiny-dinov2}]"})
    assert main(["train", *args]) == 0
    export = base / "export"
    assert main(["export", str(base / "runs" / "m"), f"out={export}", "latency_runs=1"]) == 0
    same, unlabelled = _synth(base / "same", 1, 480) / "test", _synth(base / "free", 3, 40, unlabeled=200) / "unlabeled"
    batches = {d: base / "batches" / d for d in ("2026-11-01", "2026-11-08", "2026-11-15")}
    shutil.copytree(same, batches["2026-11-01"])
    _recalibrated(same, batches["2026-11-08"])
    shutil.copytree(unlabelled, batches["2026-11-15"])
    return {"ref": ref, "export": export, "batches": batches, "base": base}


def _incoming(world, tmp_path, *dates):
    inc = tmp_path / "incoming"
    for d in dates:
        shutil.copytree(world["batches"][d], inc / d)
    return inc


def test_a_shifted_group_raises_the_alarm_and_is_named(world, tmp_path, capsys):
    inc = _incoming(world, tmp_path, "2026-11-01", "2026-11-08", "2026-11-15")
    code = main(["monitor", str(world["export"]), f"reference={world['ref']}", f"incoming={inc}"])
    out = capsys.readouterr().out
    assert code == 3, out
    assert "ALARM embedding drift: site=B" in out and "(exit 3)" in out
    report = json.loads((inc / "monitor" / "report.json").read_text())
    assert report["schema"] == "agglom.monitor/1" and report["alarm"]
    same, shifted, unlabelled = report["batches"]
    assert same["batch"] == "2026-11-01" and not [f for f in same["findings"] if f["alarm"]]
    alarmed = {(f["kind"], f["group"]) for f in shifted["findings"] if f["alarm"]}
    assert ("drift", "site=B") in alarmed and ("drift", "site=A") not in alarmed and ("score", "site=B") in alarmed
    assert shifted["drift"]["site=B"]["p"] < 0.005 < shifted["drift"]["site=A"]["p"]  # site A's images are unchanged
    assert shifted["drift"]["site=A"]["p"] == same["drift"]["site=A"]["p"]
    assert max(shifted["drift"].values(), key=lambda r: r.get("mmd2", 0)) is shifted["drift"]["site=B"]
    assert same["drift"]["overall"]["p"] > 0.05 and same["auc"]["overall"]["ci"] is not None
    assert unlabelled["labelled"] == 0 and unlabelled["auc"] is None and unlabelled["drift"]["overall"]["p"] > 0
    md = (inc / "monitor" / "report.md").read_text()
    assert "**ALARM**" in md and "**site=B**" in md and "2026-11-08" in md
    assert (inc / "monitor" / "monitor.png").stat().st_size > 1000


def test_an_unshifted_batch_does_not_alarm(world, tmp_path, capsys):
    inc = _incoming(world, tmp_path, "2026-11-01")
    out = tmp_path / "report"
    assert main(["monitor", str(world["export"]), f"reference={world['ref']}", f"incoming={inc}", f"out={out}"]) == 0
    assert "no alarm" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    batch = report["batches"][0]
    assert batch["labelled"] == batch["n"] and batch["score"]["overall"]["p"] > 0.01
    assert set(batch["proportions"]) == set(report["reference"]["attributes"]) >= {"site", "sex"}


def test_label_free_batches_are_monitored(world, tmp_path, capsys):
    inc = world["batches"]["2026-11-15"]  # shards directly in incoming/: one batch
    out = tmp_path / "report"
    assert main(["monitor", str(world["export"]), f"reference={world['ref']}", f"incoming={inc}", f"out={out}",
                 "attributes=[site]", "embedding=pooled", "alarm_on=[drift,proportions]"]) == 0
    report = json.loads((out / "report.json").read_text())
    (batch,) = report["batches"]
    assert batch["labelled"] == 0 and batch["auc"] is None and batch["score"]["overall"]["p"] is not None
    assert set(batch["drift"]) == {"overall", "site=A", "site=B"} and set(batch["proportions"]) == {"site"}


def test_bad_options_are_refused_before_any_work(world, tmp_path, capsys):
    ref, export = world["ref"], world["export"]
    assert main(["monitor", str(export), f"reference={ref}", f"incoming={tmp_path}", "treshold=3"]) == 2
    assert "unknown key 'treshold'" in capsys.readouterr().err
    assert main(["monitor", str(export), f"reference={ref}", f"incoming={tmp_path}", "alpha=1.5",
                 "alarm_on=[drift,weather]", "embedding=cls", "permutations=5"]) == 2
    err = capsys.readouterr().err
    assert all(s in err for s in ("alpha=1.5", "weather", "embedding='cls'", "permutations=5"))
    assert main(["monitor", str(export), f"reference={ref}"]) == 2
    assert "give incoming=" in capsys.readouterr().err
    assert main(["monitor", str(export), f"reference={ref}", f"incoming={tmp_path}"]) == 2
    assert "no folder of shards" in capsys.readouterr().err
    assert main(["monitor", str(export), f"reference={tmp_path}", f"incoming={tmp_path}"]) == 2
    assert "no test/ folder" in capsys.readouterr().err
    assert main(["monitor", str(tmp_path), f"reference={ref}", f"incoming={world['batches']['2026-11-01']}"]) == 2
    assert "not an agglom export" in capsys.readouterr().err


def test_the_statistics_on_known_samples():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 3)), rng.normal(size=(90, 3))
    assert mmd_test(x, y, 500, 0)["p"] > 0.05
    shifted = mmd_test(x, y + 1.0, 500, 0)
    assert shifted["p"] == pytest.approx(1 / 501) and shifted["mmd2"] > 0
    same = proportion_test({"A": 70, "B": 30}, {"A": 72, "B": 28})
    moved = proportion_test({"A": 70, "B": 30}, {"A": 30, "B": 60, "C": 5})
    assert same["p"] > 0.5 and moved["p"] < 1e-6 and moved["new_groups"] == ["C"]
    labels = np.repeat([0, 1], 50)
    good, bad = labels + rng.normal(0, 0.5, 100), labels + rng.normal(0, 3.0, 100)
    d = auc_delta(labels, good, labels, bad, 300, 0)
    assert d["delta"] < -0.1 and d["ci"][1] < 0 and d["reference"] > d["batch"]


def test_a_prevalence_change_alarms_where_labels_arrive():
    import numpy as np

    from agglom.monitor.assess import Reference, _prevalence, findings

    rng = np.random.default_rng(0)
    ref = Reference(projected=rng.normal(size=(400, 2)), groups={}, labels=(np.arange(400) % 2).astype(int),
                    scores=None)
    same, fewer = (np.arange(200) % 2).astype(int), (np.arange(200) % 5 == 0).astype(int)
    opts = {"alpha": 0.01, "alarm_on": ["prevalence"], "auc_drop": 0.05}
    base = {"drift": {}, "score": None, "proportions": {}, "auc": None}
    assert _prevalence(ref, -np.ones(200, dtype=int)) is None  # label-free: nothing to test
    assert not findings({**base, "prevalence": _prevalence(ref, same)}, opts)
    (f,) = findings({**base, "prevalence": _prevalence(ref, fewer)}, opts)
    assert f["kind"] == "prevalence" and f["alarm"] and f["p"] < 1e-6 and "0.500 -> 0.200" in f["text"]
