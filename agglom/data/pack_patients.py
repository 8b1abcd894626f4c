"""Patients in `agglom data pack`: where each image's patient id comes from, the rule for attributes that change
within a patient, the warning when paths show patients no one named, and the split drawn per patient.

A patient id comes from ``patient_col`` — a column of the pack CSV (agglom/data/pack_csv.py), of a folder pack's
``attrs_csv`` (agglom/data/join.py ``read_table``), or with ``resplit=`` an attribute of the samples or of
``patient_sidecar`` (agglom/data/resplit.py) — or from CheXpert / MIMIC paths (``patient_from_path=true``). It is
stored as the attribute ``patient`` (agglom/data/patients.py) and the column stays a group attribute under its own
name only when ``attr_cols`` lists it. The counting and the rules themselves are in agglom/data/patients.py.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Sequence

from agglom.data.groups import fmt_value, parse_value
from agglom.data.patients import (
    PATIENT,
    apply_patient_attrs,
    patient_from_path,
    patient_split,
    patients_text,
    repeated_patients_warning,
)
from agglom.data.splits import default_fractions, stratified_split
from agglom.errors import ConfigError


def check_patient_options(cfg: Any, resplit: bool = False) -> bool:
    """ConfigError for patient options that contradict each other or the source; True when patients are asked
    for (``patient_col`` or ``patient_from_path``; with ``resplit`` always, the patient then may sit in the
    shards' attributes)."""
    col, from_path = cfg.get("patient_col"), bool(cfg.get("patient_from_path"))
    if col and from_path:
        raise ConfigError("give patient_col=COLUMN or patient_from_path=true, not both")
    if cfg.get("patient_sidecar") and not resplit:
        raise ConfigError("patient_sidecar= gives the patients of existing shards: use it with resplit=DATASET")
    if col and cfg.get("src") and not cfg.get("attrs_csv") and not resplit:
        raise ConfigError(f"patient_col={col!r}: a folder pack (src=) reads its patient column from its attribute "
                          "table: give attrs_csv=FILE too, or patient_from_path=true for CheXpert/MIMIC paths")
    if not (col or from_path or resplit) and cfg.get("patient_attrs", "per_image") != "per_image":
        raise ConfigError(f"patient_attrs={cfg.patient_attrs}: there are no patients to apply it to; give "
                          "patient_col=COLUMN or patient_from_path=true")
    return bool(col or from_path or resplit)


def set_patients(cfg: Any, keys: Sequence[str], recs: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Write each record's patient into ``rec["attrs"]["patient"]`` (from ``rec["patient"]`` of a CSV pack, the
    attribute table's column of a folder pack, or the path), apply ``patient_attrs``, and return the datasheet's
    ``params.patients``; without patients, warn (stderr) when paths show repeated patients and return None."""
    sources = [r["rel"] for r in recs]
    if not check_patient_options(cfg):
        message = repeated_patients_warning(keys, sources)
        if message:
            print(message, file=sys.stderr, flush=True)
        return None
    col, from_path = cfg.get("patient_col"), bool(cfg.get("patient_from_path"))
    for k, r in zip(keys, recs):
        pid = patient_from_path(r["rel"], k) if from_path else r.get("patient", r["attrs"].get(PATIENT))
        r["attrs"].pop(PATIENT, None)
        if pid:
            r["attrs"][PATIENT] = str(pid)
            if col and cfg.get("src") and col in cfg.attr_cols:  # a folder pack asked for it as an attribute too
                r["attrs"][col] = parse_value(str(pid))
    return finish_patients(cfg, [r["attrs"] for r in recs], sources, "the CSV" if cfg.get("csv") else "the table")


def finish_patients(cfg: Any, attrs: Sequence[MutableMapping[str, Any]], order: Sequence[str],
                    where: str, fix: str = "give patient_col=COLUMN with the patient ids") -> Dict[str, Any]:
    """Refuse a patient source that named no patient, apply ``patient_attrs`` (with ``order`` the images' source
    paths) and return the datasheet's ``params.patients``."""
    pids = [a.get(PATIENT) for a in attrs]
    named = sum(1 for p in pids if p)
    col, from_path = cfg.get("patient_col"), bool(cfg.get("patient_from_path"))
    if named == 0:
        how = ("no image path shows a patient (CheXpert patientNNNNN/studyN/, MIMIC pNN/pNNNNNNNN/sNNNN/)"
               if from_path else f"no image has a patient id in column {col or PATIENT!r} of {where}")
        raise ConfigError(f"{how}; {fix}")
    varying = apply_patient_attrs(cfg.patient_attrs, pids, order, attrs)
    if varying:
        print("agglom data pack: attributes change between one patient's images ("
              + ", ".join(f"{a}: {patients_text(n)}" for a, n in varying.items())
              + f"); patient_attrs={cfg.patient_attrs}"
              + (" keeps each image's own value" if cfg.patient_attrs == "per_image"
                 else " gives every image its patient's first recorded value"), flush=True)
    return {"column": col or (None if from_path else PATIENT), "from_path": from_path,
            "attrs_rule": cfg.patient_attrs, "attrs_varying_in_source": varying,
            "patients": len({p for p in pids if p}), "images_without_patient": len(pids) - named}


def draw_split(cfg: Any, keys: Sequence[str], labels: Sequence[Any],
               attrs: Sequence[Mapping[str, Any]]) -> Dict[str, str]:
    """key -> split, stratified by label x the ``stratify`` attributes and seeded; per patient when any image
    has one (:func:`agglom.data.patients.patient_split`: identical to the image-level draw when every patient
    has one image), else per image (:func:`agglom.data.splits.stratified_split`)."""
    strata = [(json.dumps(lab),) + tuple(fmt_value(a.get(s, "unknown")) for s in cfg.stratify)
              for lab, a in zip(labels, attrs)]
    pids: List[Optional[str]] = [a.get(PATIENT) for a in attrs]
    try:
        fractions = default_fractions(cfg.val_frac, cfg.test_frac)
        if any(pids):
            return patient_split(keys, pids, strata, fractions, seed=cfg.seed)
        return stratified_split(keys, strata, fractions, seed=cfg.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from e


__all__ = ["check_patient_options", "set_patients", "finish_patients", "draw_split"]
