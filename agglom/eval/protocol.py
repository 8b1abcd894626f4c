"""The evaluation protocol: features on train/val/test -> linear probe (threshold on val) -> per-group
utility and fairness on test for every attribute and proxy group -> label efficiency -> fidelity -> report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from agglom.data.patients import PATIENT, patient_ids
from agglom.data.readers import eval_loader
from agglom.eval.extract import SplitFeatures, attribute_groups
from agglom.eval.metrics import evaluate_attributes, headline
from agglom.eval.report import new_report, prediction_rows, summary_table, write_predictions_csv, write_report
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


def fidelity_report(cfg: Any, fid: Any, splits_of: Dict[str, Dict[str, SplitFeatures]], args: Any,
                    device: torch.device, attr_names: Optional[List[str]], indexer: Any, specs: Sequence[str],
                    exclude_unknown: bool) -> Dict[str, Any]:
    """The report's fidelity sections from the accumulator filled on the primary model's test pass:
    ``fidelity`` (global-normalised R², the primary measure), ``fidelity_cosine`` (secondary) and
    ``fidelity_functional`` (each teacher's own probe on the student's adapter output)."""
    from agglom.eval.extract import teacher_encoder
    from agglom.eval.fidelity import fidelity_summaries, functional_fidelity

    primary = next(n for n, sp in splits_of.items() if not n.startswith("teacher:"))
    tr, te = splits_of[primary]["train"], splits_of[primary]["test"]
    groups = attribute_groups(te.attrs, attr_names or None, reference=tr.attrs, indexer=indexer, specs=specs)
    per = fidelity_summaries(fid.result(), groups, n_boot=int(args.eval.bootstrap), seed=args.seed,
                             exclude_unknown=exclude_unknown, patients=patient_ids(te.attrs))
    out: Dict[str, Any] = {"fidelity": per["r2"], "fidelity_cosine": per["cosine"],
                           "fidelity_measure": "r2_global: 1 - squared error / per-channel variance of the teacher's "
                                               "features over the whole test split (one normaliser for all groups)"}
    if te.labels.ndim != 1 or len(set(te.labels.tolist()) - {0, 1}):
        return out  # functional fidelity: binary labels only
    from agglom.eval.extract import extract_all

    summaries = fid.summary_features()
    reuse = args.eval.features != "pooled"  # the audit probed the teachers' summaries: the same features
    need = {n: teacher_encoder(fid.teachers[n], "summary") for n in summaries
            if not (reuse and f"teacher:{n}" in splits_of)}  # cached teachers are read by key
    extra = {}
    if need:  # one pass over train and val for every teacher the audit did not cover
        extra = {split: extract_all(eval_loader(cfg, split, batch_size=args.batch_size), need, device, desc=split)
                 for split in (cfg.data.train_split, cfg.data.val_split)}
    functional = {}
    for name, feats in summaries.items():
        if name in need:
            t_tr, t_va = extra[cfg.data.train_split][name], extra[cfg.data.val_split][name]
        else:
            t_tr, t_va = splits_of[f"teacher:{name}"]["train"], splits_of[f"teacher:{name}"]["val"]
        functional[name] = functional_fidelity(t_tr.features, t_tr.labels, t_va.features, t_va.labels,
                                               feats["teacher"], feats["student"], te.labels, groups,
                                               C=args.eval.probe_c, max_iter=args.eval.max_iter,
                                               threshold_method=args.eval.threshold_method, seed=args.seed,
                                               n_boot=int(args.eval.bootstrap), exclude_unknown=exclude_unknown)
    out["fidelity_functional"] = functional
    return out


def reference_comparison(ref: Path, name: str, result: Dict[str, Any], n_boot: int, seed: int,
                         exclude_unknown: bool) -> Dict[str, Any]:
    """Paired per-group deltas of this model's test predictions against the primary model of a reference
    evaluation (a run dir or its eval/ dir), with the levelling-down flag (:mod:`agglom.eval.compare`)."""
    from agglom.config.load import ConfigError
    from agglom.eval.compare import compare_predictions
    from agglom.eval.report import load_predictions

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


def collect_splits(cfg: Any, encoders: Dict[str, Any], device: torch.device, fidelity: Any = None,
                   batch_size: Optional[int] = None,
                   dense: Optional[Dict[str, Any]] = None, dense_grid: int = 0) -> Dict[str, Dict[str, SplitFeatures]]:
    """``{encoder name: {"train"|"val"|"test": SplitFeatures}}``: one pass over each split for all encoders;
    ``fidelity`` sees the test split. The probe is supervised: a split with unlabelled samples is refused.
    ``dense`` (encoder name -> spatial encoder): the same pass reads masks and keeps those models' spatial maps
    (average-pooled to at most ``dense_grid`` cells a side)."""
    from agglom.config.load import ConfigError
    from agglom.data.pipeline import NO_LABEL
    from agglom.eval.extract import extract_all

    out: Dict[str, Dict[str, SplitFeatures]] = {n: {} for n in encoders}
    for role, split in (("train", cfg.data.train_split), ("val", cfg.data.val_split), ("test", cfg.data.test_split)):
        loader = eval_loader(cfg, split, batch_size=batch_size, masks=bool(dense))
        got = extract_all(loader, encoders, device, desc=split, fidelity=fidelity if role == "test" else None,
                          dense=dense, dense_grid=dense_grid)
        labels = next(iter(got.values())).labels
        unlabelled = int((labels == NO_LABEL).reshape(len(labels), -1).any(1).sum())
        if unlabelled:
            raise ConfigError(f"eval: {unlabelled} of {len(labels)} samples of the {split!r} split have no "
                              "label; the evaluation fits a supervised probe, so it needs labelled train/val/test "
                              "splits (distillation itself does not)")
        for n, f in got.items():
            out[n][role] = f
    return out


def write_all(out_dir: Path, primary: str, results: Dict[str, Dict[str, Any]], extra: Optional[Dict[str, Any]],
              meta: Dict[str, Any], extra_csvs: Optional[Dict[str, Sequence[Dict[str, Any]]]] = None) -> Dict[str, Any]:
    """report.json/.md, predictions.csv (every model, a `model` column), plots; returns the report. ``extra``:
    further report sections (fidelity, comparison, zero_shot); ``extra_csvs``: further prediction files in the same
    format, ``{file name: rows}`` (zero_shot_predictions.csv), kept apart so that predictions.csv holds the probe
    protocol's models only."""
    from agglom.eval.plots import plot_calibration, plot_report

    out_dir.mkdir(parents=True, exist_ok=True)
    report = new_report(primary, {n: r["section"] for n, r in results.items()}, meta=meta)
    report.update(extra or {})
    paths = write_report(out_dir, report)
    rows = []
    for n, r in results.items():
        rows += [{"model": n, **row} for row in r["rows"]]
    write_predictions_csv(out_dir / "predictions.csv", rows)
    for fname, more in (extra_csvs or {}).items():
        if more:
            write_predictions_csv(out_dir / fname, list(more))
    plot_report(json.loads(Path(paths["json"]).read_text()), out_dir)
    for n, r in results.items():
        y, sc = r["labels"], r["scores"]
        per_label = [(None, y, sc)] if y.ndim == 1 else [(lab, y[:, j], sc[:, j]) for j, lab in
                                                           enumerate(r["label_names"])]
        for lab, yy, ss in per_label:
            for attr, g in r["groups"].items():
                stem = f"calibration_{n}_{attr}" + (f"_{lab}" if lab else "")
                safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
                plot_calibration(yy, ss, g, out_dir / f"{safe}.png", title=f"{n}: {attr}" + (f" / {lab}" if lab else ""))
    written = json.loads(Path(paths["json"]).read_text())
    print(summary_table(written), flush=True)
    if written.get("zero_shot"):
        print("zero-shot (through the CLIP text tower):\n" + summary_table({"schema": written["schema"],
                                                                          "models": written["zero_shot"]["models"]}),
              flush=True)
    for name, m in ((written.get("dense") or {}).get("models") or {}).items():
        for attr, r in m.get("attributes", {}).items():
            d, wg, gap = r["dice"]["value"], r["worst_group_dice"], r["dice_gap"]["value"]
            print(f"dense {name} / {attr}: Dice {_fmt(d)}, worst group {_fmt(wg['value'])} ({wg.get('group')}), "
                  f"gap {_fmt(gap)}", flush=True)
    from agglom.eval.sam_report import sam_console

    for line in sam_console(written.get("sam_prompts") or {}):
        print(line, flush=True)
    print(f"agglom eval: {paths['md']}", flush=True)
    return report


def _fmt(v: Any) -> str:
    return "undefined" if v is None else f"{float(v):.3f}"
