"""`agglom eval` end to end: report schema, plots, predictions.csv recomputable with other tools, teacher audit,
and a 2-point λ sweep with its Pareto front."""
import csv
import json

import numpy as np
import pytest
from fairlearn.metrics import MetricFrame, equalized_odds_difference
from sklearn.metrics import roc_auc_score

from agglom.cli import main
from agglom.eval.report.schema import validate_report

FAST_EVAL = ["eval.bootstrap=20", "eval.label_fractions=[0.1,1.0]", "eval.seeds=1", "num_workers=0"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, synth_root, make_tiny_args):
    tiny_args = make_tiny_args
    out = tmp_path_factory.mktemp("runs")
    args = tiny_args(out, synth_root, "ev", 4, **{"data.epoch_samples": 64,
                                                  "teachers": "[{name: tiny-clip}, {name: tiny-dinov2}]"})
    assert main(["train", *args]) == 0
    return out / "ev"


def test_eval_run_with_audit_writes_a_recomputable_report(small_run, capsys):
    assert main(["eval", str(small_run), "audit=true", *FAST_EVAL]) == 0
    ev = small_run / "eval"
    report = json.loads((ev / "report.json").read_text())
    validate_report(report)
    assert report["schema"] == "agglom.eval/2"
    assert set(report["models"]) == {"ev", "teacher:tiny-clip", "teacher:tiny-dinov2"}
    student = report["models"]["ev"]
    assert set(student["attributes"]) >= {"site", "sex", "shortcut", "age"}
    assert set(student["label_efficiency"]["fractions"]) == {"0.1", "1"}
    # fidelity per teacher x output x group: global-normalised R² (primary), cosine (secondary), functional
    outputs = {"tiny-clip/summary", "tiny-clip/spatial", "tiny-dinov2/summary", "tiny-dinov2/spatial"}
    assert set(report["fidelity"]["site"]) == outputs == set(report["fidelity_cosine"]["site"])
    assert report["fidelity_measure"].startswith("r2_global")
    for t in ("tiny-clip", "tiny-dinov2"):
        f = report["fidelity_functional"][t]["attributes"]["site"]
        assert set(f["by_group"]) == {"A", "B"} and 0 <= f["agreement"]["overall"]["value"] <= 1
    assert "global-normalised R²" in (ev / "report.md").read_text()
    md = (ev / "report.md").read_text()
    assert "site" in md and "teacher:tiny-clip" in md
    pngs = {p.name for p in ev.glob("*.png")}
    assert any(n.startswith("group_auc_ev_site") for n in pngs) and any(n.startswith("fidelity_") for n in pngs)
    assert any(n.startswith("calibration_ev_site") for n in pngs)
    out = capsys.readouterr().out
    assert "worst-group AUC" in out

    # recompute a few numbers from predictions.csv with sklearn / fairlearn
    with open(ev / "predictions.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == "ev" and r["split"] == "test"]
    y = np.array([int(r["label"]) for r in rows])
    s = np.array([float(r["score"]) for r in rows])
    site = np.array([r["site"] for r in rows])
    site_res = student["attributes"]["site"]
    assert roc_auc_score(y, s) == pytest.approx(site_res["auc"]["value"], abs=1e-12)
    mf = MetricFrame(metrics=roc_auc_score, y_true=y, y_pred=s, sensitive_features=site)
    for g, val in mf.by_group.items():
        assert site_res["groups"][g]["auc"]["value"] == pytest.approx(val, abs=1e-12)
    th_name = next(k for k in site_res["thresholds"] if k.startswith("val_"))
    t = float(rows[0][f"threshold:{th_name}"])
    eod = equalized_odds_difference(y, (s >= t).astype(int), sensitive_features=site)
    assert site_res["thresholds"][th_name]["eod_worst_case"]["value"] == pytest.approx(eod, abs=1e-12)


def test_teacher_audit_alone(synth_root, tmp_path):
    out = tmp_path / "audit"
    assert main(["eval", "teacher=tiny-sam", f"data_root={synth_root}", "image_size=32", f"out={out}",
                 "eval.label_fractions=[]", *FAST_EVAL[:1], "num_workers=0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["teacher:tiny-sam"]
    assert "fidelity" not in report


def test_eval_needs_a_target(capsys):
    assert main(["eval"]) == 2
    assert "give run=" in capsys.readouterr().err


@pytest.mark.slow
def test_two_point_sweep_draws_the_front(tiny_train_args, tmp_path):
    args = tiny_train_args("sw", steps=4, **{"objective.group": "variance"})
    sweep = ["sweep", *args, "sweep.lams=[0,2]", *[f"eval.{a.split('.', 1)[1]}" if a.startswith("eval.") else a
                                                       for a in FAST_EVAL if a.startswith("eval.")]]
    assert main(sweep) == 0
    out = tmp_path / "runs" / "sw-sweep"
    front = json.loads((out / "front.json").read_text())
    assert len(front["points"]) == 2 and front["front"] and front["hypervolume"] is not None
    assert (out / "front.png").is_file()
    assert any(p["pareto"] for p in front["points"])
    # every point is checked for levelling down against the λ = 0 reference, on validation and on test
    assert front["reference"]["name"] == "sw-variance-lam0"
    other = next(p for p in front["points"] if p["value"] == 2.0)
    assert isinstance(other["levels_down"], bool) and isinstance(other["levelled_down_test"], list)
    # resumable: a second call redoes nothing and gives the same front
    assert main(sweep) == 0
    assert json.loads((out / "front.json").read_text())["points"] == front["points"]
    # a dense utility: the same trained points, re-evaluated with the dense probe; the front's axes are Dice
    assert main([*sweep, "sweep.utility=dice", "sweep.gap=dice_gap", "eval.dense_steps=5"]) == 0
    dense = json.loads((out / "front.json").read_text())
    for p in dense["points"]:
        rep = json.loads((tmp_path / "runs" / p["name"] / "eval" / "report.json").read_text())
        site = rep["dense"]["models"][rep["primary"]]["attributes"]["site"]
        assert p["utility"] == site["dice"]["value"] and p["gap"] == site["dice_gap"]["value"]
    assert dense["utility_name"] == "site:dice" and "Dice statistics" in dense["selection_basis"]


def test_eval_uses_the_recipes_group_specs_and_excludes_unknown_from_gaps(tmp_path, synth_root, tiny_student):
    out = tmp_path / "runs"
    args = {"name": "spec", "out_dir": str(out), "data.root": str(synth_root), "data.image_size": 32,
            "data.batch_size": 16, "data.num_workers": 0, "data.epoch_samples": 32,
            "teachers": "[{name: tiny-clip}]", "student.model_args": tiny_student, "heads.stats_samples": 16,
            "optim.steps": 2, "log.checkpoint_interval": 2, "log.progress": "off",
            "groups.specs": "[{name: site_sex, attrs: [site, sex]}, {name: age50, attr: age, bins: [0, 50, 200]}]",
            "groups.by": "site_sex"}
    assert main(["train", *[f"{k}={v}" for k, v in args.items()]]) == 0
    assert main(["eval", str(out / "spec"), "eval.bootstrap=0", "eval.label_fractions=[]", "num_workers=0"]) == 0
    rep = json.loads((out / "spec" / "eval" / "report.json").read_text())
    attrs = rep["models"]["spec"]["attributes"]
    assert {"site_sex", "age50"} <= set(attrs)
    # the groups are the spec's, named as it names them: at least one intersection and one bin is present (a
    # subset test alone would pass on an empty result)
    site_sex, age50 = set(attrs["site_sex"]["groups"]), set(attrs["age50"]["groups"])
    assert site_sex - {"unknown"} and site_sex <= {"A|F", "A|M", "B|F", "B|M", "unknown"}
    assert age50 - {"unknown"} and age50 <= {"[0,50)", "[50,200)", "unknown"}


def test_eval_against_a_reference_run_reports_paired_group_deltas(small_run, tmp_path, synth_root, capsys,
                                                                   make_tiny_args):
    tiny_args = make_tiny_args

    if not (small_run / "eval" / "report.json").is_file():
        assert main(["eval", str(small_run), *FAST_EVAL]) == 0
    args = tiny_args(tmp_path, synth_root, "other", 4, seed=1, **{"data.epoch_samples": 64,
                                                                   "teachers": "[{name: tiny-clip}, {name: tiny-dinov2}]"})
    assert main(["train", *args]) == 0
    assert main(["eval", str(tmp_path / "other"), f"reference={small_run}", *FAST_EVAL]) == 0
    report = json.loads((tmp_path / "other" / "eval" / "report.json").read_text())
    comp = report["comparison"]
    assert comp["reference"] == "ev" and comp["new"] == "other" and isinstance(comp["levels_down"], bool)
    site = comp["attributes"]["site"]
    assert set(site["groups"]) == {"A", "B"}
    for d in (site["overall_auc"], *site["groups"].values()):
        assert d["delta"] == pytest.approx(d["new"] - d["reference"])
        assert d["ci"][0] <= d["delta"] <= d["ci"][1]
    assert "Against the reference" in (tmp_path / "other" / "eval" / "report.md").read_text()
    # a reference that was never evaluated is refused with a clear message (exit 2)
    assert main(["eval", str(tmp_path / "other"), f"reference={tmp_path / 'nowhere'}", *FAST_EVAL]) == 2
    assert "no predictions.csv" in capsys.readouterr().err


def test_eval_dense_section_for_the_student_and_each_teacher(small_run, tmp_path, capsys):
    """eval.dense=true: the 1x1 dense probe on the student's patch tokens and each teacher's spatial map against the
    synth lesion masks; its per-group Dice can be recomputed from dense_predictions.csv."""
    out = tmp_path / "dense"
    assert main(["eval", str(small_run), "audit=true", f"out={out}", "eval.dense=true", "eval.dense_steps=60",
                 "eval.fidelity=false", *FAST_EVAL, "eval.label_fractions=[]"]) == 0
    report = json.loads((out / "report.json").read_text())
    validate_report(report)
    dense = report["dense"]
    assert set(dense["models"]) == {"ev", "teacher:tiny-clip", "teacher:tiny-dinov2"}
    assert dense["mask_size"] == [32, 32] and dense["masks"]["test"]["masked"] == dense["masks"]["test"]["samples"]
    student = dense["models"]["ev"]
    assert student["kind"] == "student" and student["grid"] == [4, 4] and 0.05 <= student["threshold"] <= 0.95
    assert dense["models"]["teacher:tiny-clip"]["kind"] == "teacher"
    site = student["attributes"]["site"]
    assert site["group_names"] == ["A", "B"] and site["n"] == student["n_test"]
    assert dense["masks"]["test"]["with_foreground"] == site["n"]
    for k in ("dice", "iou", "worst_group_dice", "dice_gap", "es_dice", "es_dice_std", "dice_std", "dice_skewness"):
        assert k in site
    with open(out / "dense_predictions.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == "ev"]
    assert len(rows) == dense["masks"]["test"]["masked"]
    used = [r for r in rows if r["evaluated"] == "1"]
    d = np.array([float(r["dice"]) for r in used])
    g = np.array([r["site"] for r in used])
    assert len(used) == site["n"] and d.mean() == pytest.approx(site["dice"]["value"], abs=1e-12)
    for grp in ("A", "B"):
        assert d[g == grp].mean() == pytest.approx(site["groups"][grp]["dice"]["value"], abs=1e-12)
    assert abs(site["groups"]["A"]["dice"]["value"] - site["groups"]["B"]["dice"]["value"]) == pytest.approx(
        site["dice_gap"]["value"], abs=1e-12)
    assert (out / "dense_dice_site.png").is_file()
    assert (out / "dense_overlays.png").is_file() and (out / "dense_overlays.png").stat().st_size > 1000
    assert "Dense probe: segmentation Dice per group" in (out / "report.md").read_text()
    assert "dense ev / site: Dice" in capsys.readouterr().out


def test_eval_dense_on_the_students_adapter_maps(small_run, tmp_path):
    """eval.dense_features=adapters: the student's dense probe reads its spatial adapters (every teacher's map on the
    finest adapter grid, stacked), the feature spaces the SAM decoder swap also reads; said in the section."""
    out = tmp_path / "dense_adapters"
    assert main(["eval", str(small_run), f"out={out}", "eval.dense=true", "eval.dense_steps=30",
                 "eval.dense_features=adapters", "eval.fidelity=false", *FAST_EVAL, "eval.label_fractions=[]"]) == 0
    student = json.loads((out / "report.json").read_text())["dense"]["models"]["ev"]
    specs = [t for t in json.loads((small_run / "teachers.json").read_text()) if t.get("spatial")]
    assert student["features"] == "spatial adapter maps"
    assert student["feature_dim"] == sum(int(t["spatial_dim"]) for t in specs)
    finest = max((tuple(t["grid"]) for t in specs), key=lambda g: g[0] * g[1])
    assert tuple(student["grid"]) == tuple(min(v, 16) for v in finest)
    assert main(["eval", str(small_run), f"out={out}", "eval.dense=true", "eval.dense_features=tokenz",
                 *FAST_EVAL]) == 2


def test_eval_dense_refuses_a_dataset_without_masks(tmp_path, capsys):
    import io

    from PIL import Image

    from agglom.data.writer import DatasetWriter

    root = tmp_path / "plain"
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(buf, format="PNG")
    with DatasetWriter(root, shard_size=10) as w:
        for i, split in enumerate(["train", "val", "test"] * 2):
            w.write(f"k{i}", buf.getvalue(), "png", i % 2, {"site": "A"}, split)
        w.close(name="plain")
    assert main(["eval", "teacher=tiny-sam", f"data_root={root}", f"out={tmp_path / 'ev'}", "eval.dense=true",
                 "num_workers=0"]) == 2
    assert "no segmentation masks" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()
