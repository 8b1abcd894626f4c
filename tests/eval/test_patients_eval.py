"""Patients through evaluation: a synthetic set with three follow-ups per subject, trained and evaluated through the
real CLI. Every interval resamples patients, the report names patients beside images, the patient id is never a
group, and the predictions carry it so a later comparison or verdict clusters too."""
import csv
import json

import numpy as np
import pytest

from agglom.cli import main
from agglom.data.synth import SynthParams, write_synth

FAST_EVAL = ["eval.bootstrap=20", "eval.label_fractions=[1.0]", "eval.seeds=1", "num_workers=0"]


@pytest.fixture(scope="module")
def patient_run(tmp_path_factory, make_tiny_args):
    root = tmp_path_factory.mktemp("pat") / "ds"
    write_synth(str(root), SynthParams(n=90, image_size=32, seed=1, images_per_patient=3), shard_size=60,
                val_frac=0.2, test_frac=0.4)
    out = tmp_path_factory.mktemp("runs")
    args = make_tiny_args(out, root, "pt", 4, **{"data.epoch_samples": 64, "teachers": "[{name: tiny-clip}]"})
    assert main(["train", *args]) == 0
    assert main(["eval", str(out / "pt"), *FAST_EVAL]) == 0
    return out / "pt"


def test_report_resamples_patients_and_counts_them(patient_run):
    ev = patient_run / "eval"
    report = json.loads((ev / "report.json").read_text())
    site = report["models"]["pt"]["attributes"]["site"]
    assert "patient" not in report["models"]["pt"]["attributes"]
    assert "over patients" in site["bootstrap"]["method"]
    for g, e in site["groups"].items():
        assert e["n"] == 3 * e["n_patients"], g  # three follow-ups per patient, none split across splits
    assert "patients / " in (ev / "report.md").read_text()
    fid = next(iter(report["fidelity"]["site"].values()))
    assert sum(v["n_patients"] for v in fid["by_group"].values()) == fid["n_patients"]


def test_predictions_carry_the_patient_and_the_comparison_clusters(patient_run):
    from agglom.eval.classification.compare import compare_predictions
    from agglom.eval.predictions import load_predictions

    with open(patient_run / "eval" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["patient"] for r in rows)
    test = load_predictions(patient_run)
    assert len(set(test["patient"].tolist())) * 3 == len(test["key"])
    shifted = dict(test, score=np.clip(test["score"] + 0.01, 0, 1))
    c = compare_predictions(shifted, test, ["site"], n_boot=20)
    assert "over patients" in c["attributes"]["site"]["bootstrap"]["method"]
