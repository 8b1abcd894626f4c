"""Report schema, Markdown, PNG plots and the predictions.csv round trip (agglom.eval.report, agglom.eval.predictions)."""

import json

import numpy as np
import pytest
from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference
from sklearn.metrics import roc_auc_score

from agglom.eval import metrics as M
from agglom.eval.md_format import summary_table
from agglom.eval.predictions import prediction_rows, read_predictions_csv, write_predictions_csv
from agglom.eval.report import plots
from agglom.eval.report.schema import SCHEMA, new_report, validate_report
from agglom.eval.report.write import write_report
from agglom.eval.section import ReportError
from agglom.metrics.pareto import front_summary


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sex = rng.choice(["F", "M", "unknown"], n, p=[0.45, 0.45, 0.1])
    site = rng.choice(["A", "B", "C"], n)
    s = np.clip(0.3 * y + 0.6 * rng.random(n) + 0.1 * (site == "C"), 0, 1)
    return y, s, {"sex": sex, "site": site}


def _report():
    y, s, attrs = _data()
    thr = {"fixed_0.5": 0.5, "val_youden": 0.45}
    student = M.evaluate_attributes(y, s, attrs, thresholds=thr, optimistic_f1=True, n_boot=30, exclude_unknown=True)
    teacher = M.evaluate_attributes(y, np.clip(s * 0.9, 0, 1), {"sex": attrs["sex"]}, n_boot=0)
    Y2 = np.stack([y, 1 - y], 1)
    S2 = np.stack([s, 1 - s], 1)
    student["site_ml"] = M.multilabel_group_metrics(Y2, S2, attrs["site"], label_names=["d", "nd"], n_boot=0)
    rng = np.random.default_rng(1)
    fid = {t: M.group_mean_summary(0.9 + 0.05 * rng.random(len(y)), attrs["site"]) for t in ("dino", "clip")}
    le = {
        "fractions": {
            "0.1": {"fraction": 0.1, "seeds": {"0": {"n_train": 30, "metrics": {"auc": 0.8, "worst_group_auc": None}}}},
            "1": {"fraction": 1.0, "seeds": {"0": {"n_train": 300, "metrics": {"auc": 0.9, "worst_group_auc": 0.85}}}},
        }
    }
    cands = [{"name": f"lambda={lam}", "utility": u, "gap": g, "worst_group": w, "lambda": lam}
             for lam, u, g, w in [(0, 0.9, 0.1, 0.8), (1, 0.88, 0.05, 0.84), (2, 0.85, 0.08, 0.8)]]  # fmt: skip
    rep = new_report(
        "student",
        {
            "student": {"kind": "student", "attributes": student, "label_efficiency": le},
            "teacher:dino": {"kind": "teacher", "attributes": teacher},
        },
        fidelity={"site": fid},
        pareto=front_summary(cands),
    )
    return rep, (y, s, attrs, thr)


def test_report_written_validated_and_readable(tmp_path):
    rep, _ = _report()
    paths = write_report(tmp_path, rep)
    d = json.loads(open(paths["json"]).read())  # strict JSON: NaN became null
    assert d["schema"] == SCHEMA and d["primary"] == "student" and "created" in d
    validate_report(d)
    md = open(paths["md"]).read()
    for s in ("Model `student`", "worst-group AUC", "ES-AUC", "EOD worst-case", "DPD", "Fidelity per teacher",
              "Label efficiency", "Teacher audit", "Utility–fairness front", "optimistic", "site_ml / macro",
              "excluded from gaps"):  # fmt: skip
        assert s in md, s
    table = summary_table(d)
    assert "teacher:dino" in table and "worst-group AUC" in table
    assert len(table.splitlines()) == 2 + 4  # student: sex, site, site_ml; teacher: sex


def test_validate_report_rejects_bad_reports():
    rep, _ = _report()
    rep = json.loads(json.dumps(M.nan_to_none(rep)))
    with pytest.raises(ReportError, match="schema"):
        validate_report({**rep, "schema": "agglom.eval/0"})
    with pytest.raises(ReportError, match="primary"):
        validate_report({**rep, "primary": "nobody"})
    bad = json.loads(json.dumps(rep))
    del bad["models"]["student"]["attributes"]["sex"]["auc_gap"]
    with pytest.raises(ReportError, match="auc_gap"):
        validate_report(bad)
    bad = json.loads(json.dumps(rep))
    bad["models"]["student"]["attributes"]["sex"]["auc"] = {"value": "high"}
    with pytest.raises(ReportError):
        validate_report(bad)
    with pytest.raises(ReportError, match="models"):
        validate_report({"schema": SCHEMA, "primary": "x", "models": {}})


def test_plots_written(tmp_path):
    rep, (y, s, attrs, _) = _report()
    a = plots.plot_group_auc(rep["models"]["student"]["attributes"]["sex"], tmp_path / "g.png")
    b = plots.plot_fidelity_heatmap(rep["fidelity"]["site"], tmp_path / "f.png")
    c = plots.plot_calibration(y, s, attrs["sex"], tmp_path / "c.png", binning="unit15")
    d = plots.plot_front(rep["pareto"], tmp_path / "p.png")
    allp = plots.plot_report(M.nan_to_none(rep), tmp_path / "all")
    for p in [a, b, c, d, *allp]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # group AUC: student sex, site, site_ml/d, site_ml/nd + teacher sex = 5; fidelity heatmap 1; front 1
    assert len(allp) == 7


def test_predictions_csv_round_trip_matches_report(tmp_path):
    rep, (y, s, attrs, thr) = _report()
    write_report(tmp_path, rep)
    d = json.loads((tmp_path / "report.json").read_text())
    keys = [f"s{i:04d}" for i in range(len(y))]
    rows = prediction_rows(keys, "test", y, s, thr, {**attrs, "proxy:kmeans3": attrs["site"]})
    path = write_predictions_csv(tmp_path / "predictions.csv", rows)
    header = open(path).readline().strip().split(",")
    assert header[:6] == ["key", "split", "label", "score", "threshold:fixed_0.5", "threshold:val_youden"]
    assert header[6:] == ["sex", "site", "proxy:kmeans3"]
    c = read_predictions_csv(path)
    assert list(c["key"]) == keys and np.array_equal(c["score"], s) and np.array_equal(c["label"], y)
    r = d["models"]["student"]["attributes"]["sex"]
    # independent recomputation with sklearn / fairlearn from the CSV alone
    assert r["auc"]["value"] == pytest.approx(roc_auc_score(c["label"], c["score"]))
    t = c["threshold:val_youden"][0]
    assert r["excluded_from_gaps"] == ["unknown"]  # the fixture excludes "unknown" from gaps: drop it here too
    k = c["sex"] != "unknown"
    lab, sc, sex = c["label"][k], c["score"][k], c["sex"][k]
    yhat = (sc >= t).astype(int)
    tr = r["thresholds"]["val_youden"]
    assert tr["threshold"] == t
    dpd = demographic_parity_difference(lab, yhat, sensitive_features=sex)
    assert tr["dpd"]["value"] == pytest.approx(dpd)
    assert tr["eod_worst_case"]["value"] == pytest.approx(equalized_odds_difference(lab, yhat, sensitive_features=sex))
    assert tr["eod_mean"]["value"] == pytest.approx(
        equalized_odds_difference(lab, yhat, sensitive_features=sex, agg="mean")
    )
    mf = MetricFrame(metrics=roc_auc_score, y_true=lab, y_pred=sc, sensitive_features=sex)
    assert r["worst_group_auc"]["value"] == pytest.approx(mf.group_min())
    assert r["auc_gap"]["value"] == pytest.approx(mf.difference())
    for g, v in mf.by_group.items():
        assert r["groups"][g]["auc"]["value"] == pytest.approx(v)
    u = c["sex"] == "unknown"
    assert r["groups"]["unknown"]["auc"]["value"] == pytest.approx(roc_auc_score(c["label"][u], c["score"][u]))
    # multi-label rows
    Y2, S2 = np.stack([y, 1 - y], 1), np.stack([s, 1 - s], 1)
    rows2 = prediction_rows(keys, "test", Y2, S2, {"fixed_0.5": [0.5, 0.4]}, attrs, label_names=["d", "nd"])
    c2 = read_predictions_csv(write_predictions_csv(tmp_path / "p2.csv", rows2))
    assert np.array_equal(c2["label:nd"], 1 - y) and c2["threshold:fixed_0.5:nd"][0] == 0.4


def test_predictions_csv_carries_the_optimistic_threshold_when_asked(tmp_path):
    """eval.optimistic_f1=true: the best-F1 threshold of the test split is a column, so FairMedFM-style numbers can
    be recomputed from predictions.csv alone."""
    from omegaconf import OmegaConf

    from agglom.config.schema import EvalConfig
    from agglom.eval.classification.protocol import probe_model
    from agglom.eval.extract import SplitFeatures
    from agglom.metrics.thresholds import OPTIMISTIC_THRESHOLD

    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, 4)) + y[:, None]
        return SplitFeatures(x, y, [f"k{i}" for i in range(n)], [{"site": "AB"[i % 2]} for i in range(n)])

    splits = {"train": split(80), "val": split(40), "test": split(40)}
    ev = OmegaConf.structured(EvalConfig(optimistic_f1=True, bootstrap=0, label_fractions=[]))
    res = probe_model("m", "student", splits, ev, ["site"])
    t = res["section"]["attributes"]["site"]["thresholds"][OPTIMISTIC_THRESHOLD]["threshold"]
    col = f"threshold:{OPTIMISTIC_THRESHOLD}"
    assert all(r[col] == pytest.approx(t) for r in res["rows"])
    path = write_predictions_csv(tmp_path / "p.csv", res["rows"])
    assert np.allclose(read_predictions_csv(path)[col], t)
    ev.optimistic_f1 = False
    assert col not in probe_model("m", "student", splits, ev, ["site"])["rows"][0]
