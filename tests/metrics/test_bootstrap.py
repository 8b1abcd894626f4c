"""The one bootstrap (agglom/metrics/bootstrap.py): patient-clustered draws, identity with the image bootstrap when
every patient has one image, and every interval of the report using it."""
from __future__ import annotations

import numpy as np
import pytest

from agglom.metrics.bootstrap import Resampler, add_patient_counts, strata_by


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.choice(["A", "B", "unknown"], n, p=[.6, .3, .1])
    y = (rng.random(n) < .4).astype(int)
    return g, y, y + rng.normal(0, 1, n), y + rng.normal(0, 1.3, n)


def test_one_image_per_patient_draws_the_image_bootstrap_exactly():
    g, y, _, _ = _data()
    strata = strata_by(g, y)
    plain, clustered = Resampler(strata), Resampler(strata, [f"p{i}" for i in range(y.size)])
    for a, b in zip(plain.replicates(20, 3), clustered.replicates(20, 3)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(plain.jackknife(20, 4), clustered.jackknife(20, 4)):
        np.testing.assert_array_equal(a, b)


def test_patients_are_drawn_whole_and_left_out_whole():
    pid = np.repeat(np.arange(30), 4)
    y = (pid % 3 == 0).astype(int)
    r = Resampler(strata_by(np.full(pid.size, "A"), y), pid)
    assert r.n_clusters == 30 and r.n_samples == 120
    for idx in r.replicates(10, 0):
        counts = np.bincount(idx, minlength=pid.size)
        per_patient = counts.reshape(30, 4)
        assert (per_patient == per_patient[:, :1]).all()  # all four images of a patient, as often as it was drawn
        assert idx.size % 4 == 0
    for keep in r.jackknife(5, 1):
        kept = set(pid[keep].tolist())
        assert all(np.sum(pid[keep] == p) == 4 for p in kept) and len(kept) < 30


def test_a_patient_sits_in_the_stratum_of_its_first_image():
    # patient 0 has a label-0 and a label-1 image: it is drawn whole from the stratum of its first (label 0)
    pid = np.asarray(["p0", "p0", "p1", "p2", "p3"])
    y = np.asarray([0, 1, 1, 0, 1])
    r = Resampler(strata_by(np.full(5, "A"), y), pid)
    for idx in r.replicates(50, 0):
        assert np.sum(idx == 0) == np.sum(idx == 1)


def test_length_mismatch_is_refused():
    from agglom.eval.classification.compare import paired_group_deltas

    g, y, a, b = _data()
    with pytest.raises(ValueError, match="patient ids"):
        paired_group_deltas(y, a, b, g, n_boot=5, patients=np.arange(3))


def _unique_ids(n):
    return np.asarray([f"p{i}" for i in range(n)], dtype=object)


def test_every_interval_is_unchanged_by_one_image_patients():
    from agglom.eval.classification.compare import paired_group_deltas
    from agglom.eval.dense.dense import dice_fairness
    from agglom.eval.metrics import binary_group_metrics
    from agglom.metrics.group_means import group_mean_summary

    g, y, a, b = _data(200, 1)
    ids = _unique_ids(y.size)

    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k not in ("n_patients", "method")}
        return d

    calls = [lambda **kw: paired_group_deltas(y, a, b, g, n_boot=30, seed=2, **kw),
             lambda **kw: group_mean_summary(a, g, n_boot=30, seed=2, **kw),
             lambda **kw: dice_fairness(np.abs(a) % 1, np.abs(b) % 1, g, n_boot=30, seed=2, **kw),
             lambda **kw: binary_group_metrics(y, 1 / (1 + np.exp(-a)), g, n_boot=30, seed=2, **kw)]
    for call in calls:
        assert strip(call()) == strip(call(patients=ids))


def test_clustered_intervals_are_wider_with_correlated_images_and_groups_count_patients():
    from agglom.eval.metrics import binary_group_metrics

    rng = np.random.default_rng(0)
    pid = np.repeat(np.arange(60), 5)
    y = (pid % 2).astype(int)
    s = y[pid] * 0 + y + np.repeat(rng.normal(0, 1.5, 60), 5) + rng.normal(0, .3, pid.size)
    g = np.where(pid < 40, "A", "B")
    img = binary_group_metrics(y, 1 / (1 + np.exp(-s)), g, n_boot=100)
    pat = binary_group_metrics(y, 1 / (1 + np.exp(-s)), g, n_boot=100, patients=pid.astype(str))
    assert img["auc"]["value"] == pat["auc"]["value"]
    w = lambda r: r["auc"]["ci"][1] - r["auc"]["ci"][0]  # noqa: E731
    assert w(pat) > 1.5 * w(img)
    assert pat["groups"]["A"]["n_patients"] == 40 and pat["groups"]["A"]["n"] == 200
    assert "over patients (60 patients, 300 images)" in pat["bootstrap"]["method"]
    assert "n_patients" not in img["groups"]["A"]


def test_patient_counts_and_the_report_cell():
    from agglom.eval.md_format import _n

    out = {"groups": {"A": {"n": 4}, "B": {"n": 2}}}
    add_patient_counts(out, np.asarray(["A", "A", "A", "A", "B", "B"]), np.asarray(list("xxyyzz")))
    assert out["n_patients"] == 3 and out["groups"]["A"]["n_patients"] == 2
    assert _n(out["groups"]["A"]) == "2 patients / 4 images" and _n({"n": 5}) == 5


def test_patient_column_is_not_a_group_attribute():
    from agglom.eval.extract import attribute_groups

    attrs = [{"site": "A", "patient": "p1"}, {"site": "B", "patient": "p2"}]
    assert list(attribute_groups(attrs)) == ["site"]


def test_clustered_coverage_on_simulated_patients():
    """Five images per patient with a strong patient effect: the patient bootstrap's 95% interval covers the true
    AUC where the image bootstrap's falls short (docs/metrics.md has the 200-dataset figures)."""
    from benchmarks.patient_coverage import coverage

    res = coverage({"datasets": 60, "patients": 90, "images": 5, "n_boot": 150, "rho": 0.8, "mu": 1.2, "seed": 1})
    assert res["coverage"]["patients"] >= 0.88
    assert res["coverage"]["images"] <= 0.85
    assert res["mean_width"]["patients"] > 1.5 * res["mean_width"]["images"]
