"""Fidelity measured so groups compare, BCa intervals that contain their estimate, the paired levelling-down check."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agglom.eval.classification.compare import compare_predictions, paired_group_deltas
from agglom.eval.fidelity.fidelity import FidelityAccumulator, global_r2
from agglom.eval.metrics import binary_group_metrics, group_mean_summary
from agglom.metrics.intervals import bca_interval


class _Out:
    def __init__(self, summary, spatial):
        self.summary, self.spatial = summary, spatial


class _Teacher:
    """Returns fixed features per input row (x[:, 0] holds the row index)."""

    def __init__(self, feats):
        self.feats = feats

    def __call__(self, x):
        f = self.feats[x[:, 0].long()]
        return _Out(f, f[:, :, None, None].expand(-1, -1, 2, 2))


class _Student:
    """Predicts teacher features + a fixed error, in a z-scored space with the training normaliser's (mu, sd)."""

    teacher_names = ["t"]

    def __init__(self, feats, err, mu, sd):
        self.feats, self.err, self.mu, self.sd = feats, err, mu, sd

    def __call__(self, x):
        p = (self.feats[x[:, 0].long()] + self.err[x[:, 0].long()] - self.mu) / self.sd
        return {"t": {"summary": p, "spatial": p[:, :, None, None].expand(-1, -1, 2, 2)}}

    def normalise_targets(self, name, summary, spatial, update):
        return {"summary": (summary - self.mu) / self.sd,
                "spatial": (spatial - self.mu[:, None, None]) / self.sd[:, None, None]}

    def denormalise(self, name, pred):
        return {"summary": pred["summary"] * self.sd + self.mu,
                "spatial": pred["spatial"] * self.sd[:, None, None] + self.mu[:, None, None]}


def test_global_r2_is_invariant_to_a_groups_feature_norm_where_cosine_is_not():
    gen = torch.Generator().manual_seed(0)
    n, d = 200, 8
    base = torch.randn(n, d, generator=gen)
    group = np.array(["A"] * 100 + ["B"] * 100)
    feats = base.clone()
    feats[100:] = feats[100:] * 6.0 + 4.0  # group B sits far from the mean, with a large norm
    err = 0.3 * torch.randn(n, d, generator=gen)
    err[100:] = err[:100]  # the very same absolute error in both groups
    mu, sd = feats[:100].mean(0), feats[:100].std(0)  # a training normaliser that saw mostly A
    acc = FidelityAccumulator(_Student(feats, err, mu, sd), {"t": _Teacher(feats)})
    x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)
    for i in range(0, n, 50):
        acc.update(x[i:i + 50])
    res = acc.result()
    r2 = group_mean_summary(res["r2"]["t/summary"], group)
    cos = group_mean_summary(res["cosine"]["t/summary"], group)
    assert r2["gap"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert cos["gap"]["value"] > 0.03  # cosine calls B (far from the normaliser's mean) better at the same error
    assert cos["by_group"]["B"]["value"] > cos["by_group"]["A"]["value"]
    assert 0 < r2["overall"]["value"] < 1
    assert set(res["r2"]) == {"t/summary", "t/spatial"}


def test_global_r2_by_hand_and_constant_channel_floor():
    sq = np.array([[1.0, 4.0], [0.0, 0.0]])
    assert global_r2(sq, np.array([2.0, 8.0])).tolist() == [pytest.approx(1 - (0.5 + 0.5) / 2), 1.0]
    # a constant channel (variance 0) is floored at 1% of the mean variance instead of dividing by 0
    out = global_r2(np.array([[0.0, 1e-3]]), np.array([1.0, 0.0]))
    assert np.isfinite(out).all() and out[0] == pytest.approx(1 - (0 + 1e-3 / 5e-3) / 2)


def test_bca_interval_contains_its_point_estimate():
    rng = np.random.default_rng(0)
    reps = rng.gamma(2.0, 0.02, 500) + 0.045  # every replicate above the point: percentile misses it
    lo, hi, widened = bca_interval(0.041, reps, None)
    assert lo <= 0.041 <= hi and widened
    sym = rng.normal(0.5, 0.05, 500)
    lo, hi, widened = bca_interval(0.5, sym, rng.normal(0.5, 0.01, 20))
    assert lo < 0.5 < hi and not widened and hi - lo == pytest.approx(0.196, abs=0.03)


def test_every_group_metric_interval_contains_its_estimate():
    rng = np.random.default_rng(3)
    n = 400
    g = np.where(rng.random(n) < 0.15, "B", "A")
    y = (rng.random(n) < 0.5).astype(int)
    s = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.25, n) * np.where(g == "B", 1.5, 1.0), 0, 1)
    res = binary_group_metrics(y, s, g, n_boot=100, seed=1)

    def walk(node):
        if isinstance(node, dict):
            if "value" in node and "ci" in node and node["ci"] is not None and node["value"] is not None:
                yield node
            for v in node.values():
                yield from walk(v)

    checked = list(walk(res))
    assert len(checked) > 20
    for m in checked:
        assert m["ci"][0] - 1e-12 <= m["value"] <= m["ci"][1] + 1e-12, m


def _pair(seed=0, n=600):
    rng = np.random.default_rng(seed)
    g = np.where(np.arange(n) % 4 == 0, "B", "A")
    y = rng.integers(0, 2, n)
    good = y + rng.normal(0, 0.6, n)
    bad = np.where(g == "B", y + rng.normal(0, 3.0, n), good)  # the same scores on A, far worse on B
    return y, good, bad, g


def test_levelling_down_flag_fires_on_a_worse_group_and_not_on_its_mirror():
    y, good, bad, g = _pair()
    worse = paired_group_deltas(y, bad, good, g, n_boot=200)
    assert worse["levelled_down"] == ["B"] and worse["lifted"] == []
    assert worse["groups"]["A"]["delta"] == pytest.approx(0.0) and worse["groups"]["B"]["ci"][1] < 0
    mirror = paired_group_deltas(y, good, bad, g, n_boot=200)
    assert mirror["levelled_down"] == [] and mirror["lifted"] == ["B"]
    assert mirror["worst_group_auc"]["delta"] > 0 and mirror["auc_gap"]["delta"] < 0


def test_compare_predictions_aligns_by_key_and_refuses_other_samples():
    y, good, bad, g = _pair(1)
    keys = np.array([f"k{i}" for i in range(len(y))])
    order = np.random.default_rng(2).permutation(len(y))
    new = {"key": keys, "label": y, "score": bad, "site": g}
    ref = {"key": keys[order], "label": y[order], "score": good[order], "site": g[order]}
    out = compare_predictions(new, ref, ["site"], n_boot=100)
    assert out["levels_down"] and out["levelled_down"] == {"site": ["B"]}
    with pytest.raises(ValueError, match="different samples"):
        compare_predictions({**new, "key": np.array([f"z{i}" for i in range(len(y))])}, ref, ["site"], n_boot=0)


def _preds(name, keys, y, s, g):
    return {"model": name, "key": keys, "label": y, "score": s, "site": g}


def test_verdict_over_seeds_states_each_claim_plainly():
    from agglom.eval.verdict import render_verdict, verdict

    rng = np.random.default_rng(0)
    n = 800
    keys = np.array([f"k{i}" for i in range(n)])
    g = np.where(np.arange(n) % 5 == 0, "B", "A")
    y = rng.integers(0, 2, n)

    def scores(noise_a, noise_b, seed):  # group A's noise depends on the seed only: ERM and fair agree on A
        a, b = np.random.default_rng(seed).normal(0, 1, n), np.random.default_rng(seed + 99).normal(0, 1, n)
        return y + np.where(g == "B", noise_b * b, noise_a * a)

    seeds = [{"erm": _preds("erm", keys, y, scores(0.5, 2.0, 10 + i), g),
              "fair": _preds("fair", keys, y, scores(0.5, 0.7, 10 + i), g)} for i in range(2)]
    teachers = {"general": _preds("t1", keys, y, scores(0.45, 3.0, 1), g),
                "weak": _preds("t2", keys, y, scores(1.5, 1.5, 2), g)}
    v = verdict(seeds, teachers, "site", n_boot=100)
    assert v["best_teacher"] == "general" and v["seeds"] == 2 and v["n_per_group"] == {"A": 640, "B": 160}
    checks = {c["claim"].split(" ")[0] + ":" + c["claim"].split(" ")[2]: c["holds"] for c in v["checks"]}
    lift = v["fair_vs_erm"]["worst"]
    assert lift["value"] > 0.1 and lift["ci"][0] > 0  # B lifted beyond its interval
    assert v["levelled_down"] == []
    assert any(c["holds"] for c in v["checks"] if c["claim"].startswith("fair student's worst-group"))
    # the per-seed numbers are each model's own AUCs on the test samples
    from sklearn.metrics import roc_auc_score

    assert v["per_seed"][1]["fair"]["auc"] == pytest.approx(roc_auc_score(y, seeds[1]["fair"]["score"]))
    text = "\n".join(render_verdict(v))
    assert "| claim | holds | measured |" in text and "fair − ERM" in text
    # the mirror (fair and ERM swapped) levels group B down and says so
    mirror = verdict([{"erm": s["fair"], "fair": s["erm"]} for s in seeds], teachers, "site", n_boot=100)
    assert mirror["levelled_down"] == ["B"]
    assert not next(c for c in mirror["checks"] if "levelling down" in c["claim"])["holds"]
    assert checks  # every claim has a verdict


def test_student_against_each_teacher_is_paired_on_the_same_samples():
    """agglom.eval.verdict.student_vs_teachers: student − teacher AUC differences with paired BCa intervals; a
    teacher with the student's own scores differs by exactly 0, a noisier one falls below it beyond the interval."""
    from sklearn.metrics import roc_auc_score

    from agglom.eval.verdict import student_vs_teachers

    rng = np.random.default_rng(0)
    n = 600
    keys = np.array([f"k{i}" for i in range(n)])
    g = np.where(np.arange(n) % 4 == 0, "B", "A")
    y = rng.integers(0, 2, n)
    good = y + 0.6 * rng.normal(0, 1, n)
    student = _preds("student", keys, y, good, g)
    noisy = _preds("t", keys, y, y + 2.0 * rng.normal(0, 1, n), g)
    shuffled = {k: v[::-1] for k, v in student.items() if k != "model"}  # the same samples in another order
    out = student_vs_teachers(student, {"noisy": noisy, "itself": {"model": "s2", **shuffled}}, "site", n_boot=100)
    d = out["student_minus_teacher"]
    assert d["itself"]["auc"]["value"] == 0 and d["itself"]["worst"]["value"] == 0
    assert d["noisy"]["auc"]["value"] == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, noisy["score"]))
    assert d["noisy"]["auc"]["ci"][0] > 0 and d["noisy"]["worst"]["ci"][0] > 0 and set(out["groups"]) == {"A", "B"}
    with pytest.raises(ValueError, match="disagrees"):
        student_vs_teachers(student, {"bad": _preds("b", keys, 1 - y, good, g)}, "site", n_boot=10)
