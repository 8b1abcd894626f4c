"""The classification protocol: features on train/val/test -> linear probe (threshold on val) -> per-group
utility and fairness on test for every attribute and proxy group -> label efficiency; and the paired comparison of
the primary model's test predictions with a reference evaluation's."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from agglom.data.patients import PATIENT, patient_ids
from agglom.eval.extract import SplitFeatures, attribute_groups
from agglom.eval.metrics import evaluate_attributes, headline
from agglom.eval.predictions import prediction_rows
from agglom.metrics.probe import fit_linear_probe, label_efficiency


def binary_labels(y: np.ndarray) -> np.ndarray:
    """Probe targets: a binary label as is; a multi-class label one-vs-rest (multi-label form)."""
    if y.ndim == 2:
        return y.astype(int)
    classes = np.unique(y)
    if set(classes.tolist()) <= {0, 1}:
        return y.astype(int)
    return (y[:, None] == classes[None, :]).astype(int)


def _optimistic_threshold(attributes: Dict[str, Any], label_names: Optional[List[str]]) -> Dict[str, Any]:
    """``{OPTIMISTIC_THRESHOLD: t or [t per label]}`` from the first attribute's result (the threshold is chosen on
    the whole test split, so every attribute holds the same one)."""
    from agglom.eval.metrics import OPTIMISTIC_THRESHOLD

    r = next(iter(attributes.values()), None)
    if r is None:
        return {}
    if "labels" in r:
        per = [lab["thresholds"].get(OPTIMISTIC_THRESHOLD, {}).get("threshold") for lab in r["labels"].values()]
        return {OPTIMISTIC_THRESHOLD: per} if all(t is not None for t in per) else {}
    t = r["thresholds"].get(OPTIMISTIC_THRESHOLD, {}).get("threshold")
    return {} if t is None else {OPTIMISTIC_THRESHOLD: t}


def with_patients(columns: Dict[str, List[Any]], attrs: List[Dict[str, Any]]) -> Dict[str, List[Any]]:
    """The prediction rows' attribute columns, plus a ``patient`` column when the samples name their patients (so a
    later comparison or verdict resamples patients too)."""
    patients = patient_ids(attrs)
    return columns if patients is None else {**columns, PATIENT: list(patients)}


def probe_model(name: str, kind: str, splits: Dict[str, SplitFeatures], ev: Any, attr_names: Optional[List[str]],
                seed: int = 0, indexer: Any = None, specs: Sequence[str] = (),
                exclude_unknown: bool = True, label_names: Optional[List[str]] = None) -> Dict[str, Any]:
    """One model's section of the report, plus what is needed for predictions.csv and calibration plots."""
    tr, va, te = splits["train"], splits["val"], splits["test"]
    ytr, yva, yte = binary_labels(tr.labels), binary_labels(va.labels), binary_labels(te.labels)
    probe = fit_linear_probe(tr.features, ytr, va.features, yva, te.features, C=ev.probe_c, max_iter=ev.max_iter,
                             threshold_method=ev.threshold_method, seed=seed)
    groups = attribute_groups(te.attrs, attr_names or None, reference=tr.attrs, indexer=indexer, specs=specs)
    patients = patient_ids(te.attrs)
    thresholds = {k: (float(v[0]) if not probe.multilabel else v.tolist()) for k, v in probe.thresholds.items()}
    names = list(label_names) if label_names and yte.ndim == 2 and len(label_names) == yte.shape[1] else None
    kw = dict(thresholds=thresholds, optimistic_f1=ev.optimistic_f1, ece_binnings=list(ev.ece_binnings),
              n_boot=ev.bootstrap, seed=seed, exclude_unknown=exclude_unknown, label_names=names, patients=patients)
    attributes = evaluate_attributes(yte, probe.test_scores, groups, **kw)

    def quick(res) -> Dict[str, Any]:
        th = {k: (float(v[0]) if not res.multilabel else v.tolist()) for k, v in res.thresholds.items()}
        r = evaluate_attributes(yte, res.test_scores, groups, thresholds=th, ece_binnings=["range10"], n_boot=0,
                                exclude_unknown=exclude_unknown)
        out: Dict[str, Any] = {}
        for attr, rr in r.items():
            h = headline(rr)
            for k in ("auc", "worst_group_auc", "auc_gap", "eod_worst_case"):
                out[f"{attr}:{k}"] = h.get(k)
        return out

    le = None
    if ev.label_fractions:
        le = label_efficiency(tr.features, ytr, va.features, yva, te.features, quick, fractions=list(ev.label_fractions),
                              seeds=int(ev.seeds), C=ev.probe_c, max_iter=ev.max_iter,
                              threshold_method=ev.threshold_method)
    val_groups = attribute_groups(va.attrs, attr_names or None, reference=tr.attrs, indexer=indexer, specs=specs)
    val_res = evaluate_attributes(yva, probe.val_scores, val_groups, thresholds=thresholds, ece_binnings=["range10"],
                                  n_boot=0, exclude_unknown=exclude_unknown)
    section = {"kind": kind, "attributes": attributes,
               "validation": {a: headline(r) for a, r in val_res.items()},
               "probe": {"n_train": probe.n_train, "n_val": len(va.keys), "n_test": len(te.keys),
                         "C": ev.probe_c, "thresholds": thresholds, "features": ev.features,
                         "feature_dim": int(tr.features.shape[1])}}
    if le is not None:
        section["label_efficiency"] = le
    # validation rows too: model selection (sweep) compares models on validation, never on test
    csv_thresholds = dict(thresholds)
    if ev.optimistic_f1:  # the best-F1 threshold of the test split (FairMedFM's), so its numbers can be recomputed
        csv_thresholds.update(_optimistic_threshold(attributes, names))
    rows = prediction_rows(va.keys, "val", yva, probe.val_scores, csv_thresholds,
                           with_patients({k: list(v) for k, v in val_groups.items()}, va.attrs), label_names=names)
    rows += prediction_rows(te.keys, "test", yte, probe.test_scores, csv_thresholds,
                            with_patients({k: list(v) for k, v in groups.items()}, te.attrs), label_names=names)
    return {"section": section, "rows": rows, "scores": probe.test_scores, "labels": yte, "groups": groups,
            "keys": list(te.keys), "patients": patients,
            "label_names": names or [f"label{i}" for i in range(yte.shape[1])] if yte.ndim == 2 else None}


def reference_comparison(ref: Path, name: str, result: Dict[str, Any], n_boot: int, seed: int,
                         exclude_unknown: bool) -> Dict[str, Any]:
    """Paired per-group deltas of this model's test predictions against the primary model of a reference
    evaluation (a run dir or its eval/ dir), with the levelling-down flag (:mod:`agglom.eval.classification.compare`)."""
    from agglom.config.load import ConfigError
    from agglom.eval.classification.compare import compare_predictions
    from agglom.eval.predictions import load_predictions

    try:
        reference = load_predictions(ref)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"reference: {e}") from e
    labels = result["labels"]
    new = {"key": result["keys"], "label": labels, "score": result["scores"], **result["groups"]}
    if result.get("patients") is not None:
        new[PATIENT] = result["patients"]
    if labels.ndim == 2:
        new["label_names"] = result.get("label_names")
    attrs = [a for a in result["groups"] if a in reference]
    try:
        out = compare_predictions(new, reference, attrs, new_name=name, reference_name=reference["model"],
                                  n_boot=n_boot, seed=seed, exclude_unknown=exclude_unknown)
    except ValueError as e:
        raise ConfigError(f"reference={ref}: {e}") from e
    out["reference_path"] = str(ref)
    return out
