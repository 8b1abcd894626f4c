"""The demo's dense verdict: per-group Dice of students (over seeds) and teachers on the same test samples, with
paired-bootstrap intervals, and the check "student's probe Dice >= best teacher's − 0.01"."""
import csv

import numpy as np
import pytest

from agglom.eval.dense.verdict import dense_verdict, load_dense_rows, render_dense_verdict


def _rows(dice, groups):
    return {"key": np.asarray([f"k{i}" for i in range(len(dice))]), "dice": np.asarray(dice, float),
            "site": np.asarray(groups)}


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    g = np.array(["A"] * 160 + ["B"] * 40)
    base = np.clip(rng.normal(0.7, 0.05, g.size), 0, 1)
    return g, base


def test_means_per_group_and_the_check_against_the_best_teacher(data):
    g, base = data
    teachers = {"t1": _rows(base, g), "t2": _rows(base - 0.1, g)}
    good = [_rows(base + 0.02, g), _rows(base + 0.04, g)]  # seed mean: t1 + 0.03
    v = dense_verdict({"erm": good, "fair": good}, teachers, "site", n_boot=100)
    assert v["best_teacher"] == "t1" and v["groups"] == ["A", "B"] and v["n_per_group"] == {"A": 160, "B": 40}
    assert v["models"]["erm"]["dice"]["value"] == pytest.approx(base.mean() + 0.03)
    assert v["models"]["teacher:t2"]["g:B"]["value"] == pytest.approx(base[g == "B"].mean() - 0.1)
    d = v["student_vs_best_teacher"]["erm"]
    assert d["value"] == pytest.approx(0.03) and d["ci"][0] == pytest.approx(0.03, abs=1e-9)  # paired: no spread
    assert v["check"]["holds"]
    lo, hi = v["models"]["teacher:t1"]["g:B"]["ci"]
    assert lo < base[g == "B"].mean() < hi
    text = "\n".join(render_dense_verdict(v))
    assert "**yes**" in text and "teacher:t2" in text and "Dice B" in text


def test_a_student_worse_than_the_margin_fails_and_the_worst_group_is_found(data):
    g, base = data
    worse = base - np.where(g == "B", 0.2, 0.0)  # B collapses: mean drops 0.04
    v = dense_verdict({"erm": [_rows(base, g)], "fair": [_rows(worse, g)]}, {"t": _rows(base, g)}, "site",
                      n_boot=50)
    assert not v["check"]["holds"]
    assert v["student_vs_best_teacher"]["fair"]["value"] == pytest.approx(-0.04)
    assert v["models"]["fair"]["worst"]["value"] == pytest.approx(worse[g == "B"].mean())
    assert v["models"]["fair"]["gap"]["value"] == pytest.approx(worse[g == "A"].mean() - worse[g == "B"].mean())


def test_only_samples_every_model_evaluated_are_compared(data):
    g, base = data
    short = {k: v[:100] for k, v in _rows(base, g).items()}
    v = dense_verdict({"erm": [_rows(base, g)]}, {"t": short}, "site", n_boot=0)
    assert v["n_test"] == 100 and v["models"]["erm"]["dice"]["ci"] is None


def test_load_dense_rows_reads_one_models_evaluated_test_rows(tmp_path):
    p = tmp_path / "dense_predictions.csv"
    cols = ["model", "key", "split", "evaluated", "dice", "iou", "true_area", "pred_area", "threshold", "site"]
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerow(["s", "a", "test", "1", "0.5", "0.3", "0.1", "0.1", "0.5", "A"])
        w.writerow(["s", "b", "test", "0", "1.0", "1.0", "0.0", "0.0", "0.5", "B"])  # empty mask: not evaluated
        w.writerow(["t", "a", "test", "1", "0.7", "0.5", "0.1", "0.1", "0.5", "A"])
    r = load_dense_rows(p, "s")
    assert r["key"].tolist() == ["a"] and r["dice"].tolist() == [0.5] and r["site"].tolist() == ["A"]
    with pytest.raises(ValueError, match="no evaluated test rows of model 'x'"):
        load_dense_rows(p, "x")
