"""Evaluation math against hand-computed values (agglom.eval.metrics / probe / pareto)."""

import math

import numpy as np
import pytest
import torch
from fairlearn.metrics import (
    demographic_parity_difference,
    equal_opportunity_difference,
    equalized_odds_difference,
    false_negative_rate_difference,
    false_positive_rate_difference,
)
from torchmetrics.classification import BinaryAUROC, BinaryCalibrationError

from agglom.eval import metrics as M
from agglom.metrics.pareto import front_summary, hypervolume_2d, minimax_pareto_select, pareto_mask
from agglom.metrics.probe import fit_linear_probe, label_efficiency, subsample_labels

# Three groups, four samples each. Hand computation:
#   a: y 0 0 1 1, s .10 .40 .35 .80 -> AUC 3/4 ; at t=.5: yhat 0 0 0 1 -> TPR 1/2 FPR 0 FNR 1/2 sel 1/4
#   b: y 0 1 0 1, s .20 .60 .30 .90 -> AUC 4/4 ; yhat 0 1 0 1 -> TPR 1   FPR 0 FNR 0   sel 2/4
#   c: y 0 1 1 0, s .50 .45 .65 .60 -> AUC 2/4 ; yhat 1 0 1 1 -> TPR 1/2 FPR 1 FNR 1/2 sel 3/4
#   overall AUC: positives beat 3, 6, 5.5 (tie .6), 6, 4, 6 of the 6 negatives -> 30.5/36 = 61/72
Y = np.array([0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 1, 0])
S = np.array([0.10, 0.40, 0.35, 0.80, 0.20, 0.60, 0.30, 0.90, 0.50, 0.45, 0.65, 0.60])
G = np.array(["a"] * 4 + ["b"] * 4 + ["c"] * 4)
AUC = 61 / 72


def test_auc_worst_gap_esauc_hand_values():
    r = M.binary_group_metrics(Y, S, G, n_boot=0)
    assert r["group_names"] == ["a", "b", "c"]
    assert r["auc"]["value"] == pytest.approx(AUC)
    assert r["auc"]["value"] == pytest.approx(float(BinaryAUROC()(torch.tensor(S), torch.tensor(Y))))
    assert [r["groups"][g]["auc"]["value"] for g in "abc"] == pytest.approx([0.75, 1.0, 0.5])
    assert r["worst_group_auc"]["value"] == pytest.approx(0.5) and r["worst_group_auc"]["group"] == "c"
    assert r["best_group_auc"]["value"] == pytest.approx(1.0) and r["best_group_auc"]["group"] == "b"
    assert r["auc_gap"]["value"] == pytest.approx(0.5)
    # ES-AUC = (61/72) / (1 + 7/72 + 11/72 + 25/72) = 61/115
    assert r["es_auc"]["value"] == pytest.approx(61 / 115)
    assert M.es_auc(0.8, [0.7, 0.9]) == pytest.approx(0.8 / 1.2)
    assert r["undefined_auc_groups"] == []
    assert r["auc"]["ci"] is None  # no bootstrap


def test_threshold_gaps_hand_values_and_fairlearn():
    r = M.binary_group_metrics(Y, S, G, n_boot=0)
    t = r["thresholds"]["fixed_0.5"]
    assert t["threshold"] == 0.5 and t["optimistic"] is False
    bg = t["by_group"]
    assert [bg[g]["tpr"] for g in "abc"] == pytest.approx([0.5, 1.0, 0.5])
    assert [bg[g]["fpr"] for g in "abc"] == pytest.approx([0.0, 0.0, 1.0])
    assert [bg[g]["selection_rate"] for g in "abc"] == pytest.approx([0.25, 0.5, 0.75])
    assert t["dpd"]["value"] == pytest.approx(0.5)
    assert t["eo_tpr_gap"]["value"] == pytest.approx(0.5)
    assert t["fpr_gap"]["value"] == pytest.approx(1.0)
    assert t["fnr_gap"]["value"] == pytest.approx(0.5)
    assert t["eod_worst_case"]["value"] == pytest.approx(1.0)  # max(.5, 1)
    assert t["eod_mean"]["value"] == pytest.approx(0.75)  # mean(.5, 1) = mean(dTPR, dTNR)
    assert t["eod_fairmedfm_score"]["value"] == pytest.approx(0.25)  # FairMedFM score = 1 - mean
    yhat = (S >= 0.5).astype(int)
    kw = {"sensitive_features": G}
    assert t["dpd"]["value"] == pytest.approx(demographic_parity_difference(Y, yhat, **kw))
    assert t["eod_worst_case"]["value"] == pytest.approx(equalized_odds_difference(Y, yhat, agg="worst_case", **kw))
    assert t["eod_mean"]["value"] == pytest.approx(equalized_odds_difference(Y, yhat, agg="mean", **kw))
    assert t["eo_tpr_gap"]["value"] == pytest.approx(equal_opportunity_difference(Y, yhat, **kw))
    assert t["fnr_gap"]["value"] == pytest.approx(false_negative_rate_difference(Y, yhat, **kw))
    assert t["fpr_gap"]["value"] == pytest.approx(false_positive_rate_difference(Y, yhat, **kw))


def test_one_class_group_undefined_and_excluded():
    # group d has only positives: AUC undefined (None, not 0), FPR undefined; worst/gap over a, b, c only
    y = np.concatenate([Y, [1, 1]])
    s = np.concatenate([S, [0.7, 0.2]])
    g = np.concatenate([G, ["d", "d"]])
    r = M.binary_group_metrics(y, s, g, n_boot=20)
    assert r["groups"]["d"]["auc"]["value"] is None and r["groups"]["d"]["auc"]["ci"] is None
    assert r["undefined_auc_groups"] == ["d"]
    assert r["worst_group_auc"]["value"] == pytest.approx(0.5) and r["worst_group_auc"]["group"] == "c"
    assert r["auc_gap"]["value"] == pytest.approx(0.5)
    t = r["thresholds"]["fixed_0.5"]
    assert t["by_group"]["d"]["fpr"] is None and t["by_group"]["d"]["tpr"] == pytest.approx(0.5)
    assert t["fpr_gap"]["value"] == pytest.approx(1.0)  # d skipped
    assert t["eo_tpr_gap"]["value"] == pytest.approx(0.5)


def test_exclude_unknown_from_gaps():
    y = np.concatenate([Y, [0, 1]])
    s = np.concatenate([S, [0.9, 0.1]])  # unknown: AUC 0
    g = np.concatenate([G, ["unknown", "unknown"]])
    incl = M.binary_group_metrics(y, s, g, n_boot=0)
    excl = M.binary_group_metrics(y, s, g, n_boot=0, exclude_unknown=True)
    assert incl["group_names"][-1] == "unknown"
    assert incl["worst_group_auc"]["value"] == pytest.approx(0.0) and incl["worst_group_auc"]["group"] == "unknown"
    assert incl["auc_gap"]["value"] == pytest.approx(1.0)
    assert excl["worst_group_auc"]["value"] == pytest.approx(0.5) and excl["auc_gap"]["value"] == pytest.approx(0.5)
    assert excl["excluded_from_gaps"] == ["unknown"]
    assert excl["groups"]["unknown"]["auc"]["value"] == pytest.approx(0.0)  # still reported


def test_ece_both_binnings_hand_values():
    # s .05 .33 .39 .95, y 0 0 1 1
    # range10 (edges .05 + .09k): bins 0 | 3 (.33, .39) | 9 -> (.05 + 2*|.5 - .36| + .05) / 4 = .095
    # unit15 (edges k/15): bins 0 | 4 | 5 | 14 -> (.05 + .33 + .61 + .05) / 4 = .26
    y = np.array([0, 0, 1, 1])
    s = np.array([0.05, 0.33, 0.39, 0.95])
    assert M.ece(y, s, "range10") == pytest.approx(0.095)
    assert M.ece(y, s, "unit15") == pytest.approx(0.26)
    with pytest.raises(ValueError):
        M.ece(y, s, "bogus")
    rng = np.random.default_rng(1)
    yy = rng.integers(0, 2, 500)
    ss = np.concatenate([rng.random(498), [1.0, 0.0]])
    ref = float(BinaryCalibrationError(n_bins=15, norm="l1")(torch.tensor(ss), torch.tensor(yy)))
    assert M.ece(yy, ss, "unit15") == pytest.approx(ref, abs=1e-6)
    r = M.binary_group_metrics(Y, S, G, n_boot=0)
    per = [M.ece(Y[G == g], S[G == g], "range10") for g in "abc"]
    assert r["ece"]["range10"]["gap"]["value"] == pytest.approx(max(per) - min(per))
    assert r["ece"]["range10"]["overall"]["value"] == pytest.approx(M.ece(Y, S, "range10"))


def test_thresholds_choice_and_optimistic():
    y, s = Y[:4], S[:4]
    # Youden: J = .5 at t=.8 and t=.35 -> the larger, .8 ; best F1: t=.35 (P 2/3, R 1, F1 .8)
    assert M.choose_threshold(y, s, "youden") == pytest.approx(0.8)
    assert M.choose_threshold(y, s, "f1") == pytest.approx(0.35)
    with pytest.raises(ValueError):
        M.choose_threshold(y, s, "nope")
    r = M.binary_group_metrics(Y, S, G, thresholds={"fixed_0.5": 0.5, "val_youden": 0.42}, optimistic_f1=True, n_boot=0)
    assert set(r["thresholds"]) == {"fixed_0.5", "val_youden", M.OPTIMISTIC_THRESHOLD}
    opt = r["thresholds"][M.OPTIMISTIC_THRESHOLD]
    assert opt["optimistic"] is True
    assert M.f1_at(Y, S, opt["threshold"]) == pytest.approx(max(M.f1_at(Y, S, t) for t in S))
    assert M.headline(r)["threshold"] == "val_youden"


def test_fairlearn_point_estimates_match_bootstrap_core():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    s = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    g = rng.choice(["x", "y", "z", "unknown"], n)
    thr = {"fixed_0.5": 0.5, "val_f1": 0.4}
    names = M._group_order(g, "unknown")
    a = M._fairlearn_base_stats(y, s, g, thr, ["range10", "unit15"])
    b = M._numpy_base_stats(y, s, g, names, thr, ["range10", "unit15"])
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-12, nan_ok=True), k


def test_bootstrap_ci_contains_point_and_is_seeded():
    rng = np.random.default_rng(3)
    n = 600
    y = rng.integers(0, 2, n)
    s = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    g = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])
    r1 = M.binary_group_metrics(y, s, g, n_boot=100, seed=7)
    r2 = M.binary_group_metrics(y, s, g, n_boot=100, seed=7)
    r3 = M.binary_group_metrics(y, s, g, n_boot=100, seed=8)
    assert r1 == r2
    assert r1["auc"]["ci"] != r3["auc"]["ci"]
    for m in (r1["auc"], r1["worst_group_auc"], r1["es_auc"], *[r1["groups"][k]["auc"] for k in "abc"],
              r1["ece"]["range10"]["overall"], r1["thresholds"]["fixed_0.5"]["eod_worst_case"]):  # fmt: skip
        lo, hi = m["ci"]
        assert lo <= m["value"] <= hi
    assert r1["bootstrap"] == {"n_boot": 100, "ci": 0.95, "seed": 7, "method": r1["bootstrap"]["method"]}


def test_multilabel_per_label_and_macro():
    Y2 = np.stack([Y, 1 - Y], 1)
    S2 = np.stack([S, 1 - S], 1)
    r = M.multilabel_group_metrics(Y2, S2, G, label_names=["p", "q"], thresholds={"fixed_0.5": [0.5, 0.5]}, n_boot=0)
    assert r["label_names"] == ["p", "q"]
    single = M.binary_group_metrics(Y, S, G, n_boot=0)
    assert r["labels"]["p"]["auc"] == single["auc"]
    # flipping label and score leaves AUCs unchanged
    assert r["labels"]["q"]["auc"]["value"] == pytest.approx(AUC)
    assert r["macro"]["auc"] == pytest.approx(AUC)
    assert r["macro"]["worst_group_auc"] == pytest.approx(0.5)
    q = r["labels"]["q"]["thresholds"]["fixed_0.5"]["dpd"]["value"]
    assert r["macro"]["fixed_0.5:dpd"] == pytest.approx((0.5 + q) / 2)
    ev = M.evaluate_attributes(Y2, S2, {"site": G}, label_names=["p", "q"], n_boot=0)
    assert ev["site"]["macro"]["auc"] == pytest.approx(AUC)


def test_group_mean_summary():
    v = np.array([0.9, 0.8, 0.5, 0.7, 0.95])
    g = np.array(["a", "a", "b", "b", "unknown"])
    r = M.group_mean_summary(v, g, exclude_unknown=True, n_boot=50)
    assert r["by_group"]["a"]["value"] == pytest.approx(0.85) and r["by_group"]["b"]["value"] == pytest.approx(0.6)
    assert r["worst_group"]["group"] == "b" and r["gap"]["value"] == pytest.approx(0.25)
    assert r["excluded_from_gaps"] == ["unknown"]


# --------------------------------------------------------------------------- probe
def _separable(n, d=8, seed=0, labels=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w = rng.normal(size=(d, labels))
    y = (x @ w > 0.3).astype(int)
    return x, (y[:, 0] if labels == 1 else y)


def test_probe_separable_and_label_efficiency():
    x, y = _separable(600)
    tr, va, te = slice(0, 300), slice(300, 450), slice(450, 600)
    res = fit_linear_probe(x[tr], y[tr], x[va], y[va], x[te], C=1.0, max_iter=500)
    assert res.test_scores.shape == (150,)
    assert M.binary_group_metrics(y[te], res.test_scores, np.array(["g"] * 150), n_boot=0)["auc"]["value"] > 0.95
    assert 0 < res.threshold("val_youden") < 1 and res.threshold("fixed_0.5") == 0.5

    def fn(r):
        from sklearn.metrics import roc_auc_score

        return {"auc": roc_auc_score(y[te], r.test_scores), "n": r.n_train}

    le = label_efficiency(x[tr], y[tr], x[va], y[va], x[te], fn, fractions=[0.001, 0.1, 1.0], seeds=2, max_iter=200)
    assert set(le["fractions"]) == {"0.001", "0.1", "1"}
    tiny = le["fractions"]["0.001"]["seeds"]
    assert all(v["n_train"] == 2 for v in tiny.values())  # one per class guaranteed
    assert le["fractions"]["1"]["seeds"]["0"]["n_train"] == 300
    assert le["fractions"]["1"]["seeds"]["1"]["metrics"]["auc"] > 0.95


def test_subsample_labels_stratified_and_multilabel():
    y = np.array([0] * 95 + [1] * 5)
    idx = subsample_labels(y, 0.1, seed=0)
    assert (y[idx] == 1).sum() == 1 and (y[idx] == 0).sum() == 10  # round(.5) -> max(1, 0) ; round(9.5) = 10
    assert np.array_equal(subsample_labels(y, 0.1, 0), subsample_labels(y, 0.1, 0))
    x, Y2 = _separable(400, labels=3, seed=2)
    idx = subsample_labels(Y2, 0.005, seed=1)
    for j in range(3):
        assert set(Y2[idx, j]) == {0, 1}
    res = fit_linear_probe(x[:300], Y2[:300], x[300:350], Y2[300:350], x[350:], max_iter=300, threshold_method="f1")
    assert res.multilabel and res.test_scores.shape == (50, 3) and res.threshold("val_f1").shape == (3,)


# --------------------------------------------------------------------------- pareto
CANDS = [
    {"name": "A", "utility": 0.80, "gap": 0.10, "worst_group": 0.70},
    {"name": "B", "utility": 0.85, "gap": 0.20, "worst_group": 0.72},
    {"name": "C", "utility": 0.78, "gap": 0.05, "worst_group": 0.74},
    {"name": "D", "utility": 0.75, "gap": 0.15, "worst_group": 0.73},  # dominated by A and C
    {"name": "E", "utility": 0.85, "gap": 0.25, "worst_group": 0.80},  # dominated by B (best worst-group, ignored)
    {"name": "F", "utility": float("nan"), "gap": 0.01, "worst_group": 0.9},  # undefined
]


def test_pareto_front_hypervolume_minimax():
    mask = pareto_mask([c["utility"] for c in CANDS], [c["gap"] for c in CANDS])
    assert mask.tolist() == [True, True, True, False, False, False]
    # ref (.5, 1): .35*.8 + .30*.1 + .28*.05 = .324
    hv = hypervolume_2d([c["utility"] for c in CANDS], [c["gap"] for c in CANDS])
    assert hv == pytest.approx(0.324)
    assert hypervolume_2d([0.9], [0.2], reference=(0.0, 1.0)) == pytest.approx(0.72)
    assert hypervolume_2d([0.4], [0.2]) == 0.0  # worse than the reference
    assert minimax_pareto_select(CANDS)["name"] == "C"
    s = front_summary(CANDS)
    assert s["front"] == ["B", "A", "C"] and s["selected"] == "C"
    assert s["points"][5]["utility"] is None and s["points"][5]["defined"] is False
    import json

    json.dumps(s, allow_nan=False)
    assert math.isclose(s["hypervolume"], 0.324)


def test_minimax_pareto_never_picks_a_levelling_down_candidate_when_another_exists():
    cands = [dict(c) for c in CANDS]
    chosen = minimax_pareto_select(cands)["name"]
    for c in cands:
        c["levels_down"] = c["name"] == chosen
    second = minimax_pareto_select(cands)
    assert second["name"] != chosen and not second["levels_down"]
    for c in cands:  # every candidate levels down: the rule still returns its choice (and the sweep says so)
        c["levels_down"] = True
    assert minimax_pareto_select(cands)["name"] == chosen
