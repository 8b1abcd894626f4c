"""The driver behind `agglom monitor`: read the model, the reference split and every arriving batch, assess each
batch (:mod:`agglom.monitor.assess`), write the report (:mod:`agglom.monitor.report`) and say whether to alarm.

The command module only parses arguments and calls :func:`run_monitor`; the exit code (:data:`ALARM_EXIT`) is its.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from agglom.errors import ConfigError
from agglom.monitor.assess import Reference, assess_batch, binary_labels, fit_probe
from agglom.monitor.stats import fit_pca, project

MONITOR_SCHEMA = "agglom.monitor/1"
ALARM_EXIT = 3  # `agglom monitor`'s exit code when a finding it alarms on was made


def out_dir(args: Any) -> Path:
    """``out=``, else ``<incoming>/monitor``."""
    return Path(args.out) if args.out else Path(args.incoming) / "monitor"


def _check_paths(args: Any) -> None:
    from agglom.data.writer import read_datasheet

    missing = [k for k in ("model", "reference", "incoming") if not getattr(args, k)]
    if missing:
        raise ConfigError(f"monitor: give {', '.join(f'{k}=...' for k in missing)} (model: an export folder or "
                          ".onnx; reference: the dataset it was validated on; incoming: a folder per date of shards)")
    ref = Path(args.reference)
    if not (ref / args.reference_split).is_dir():
        raise ConfigError(f"reference={ref}: no {args.reference_split}/ folder of shards in it (the split the model "
                          "was validated on; reference_split= names another)")
    if read_datasheet(ref) is None:
        raise ConfigError(f"reference={ref}: no datasheet (dataset.json); give the dataset folder `agglom data pack` "
                          "or `agglom data synth` wrote")


def _options(args: Any) -> Dict[str, Any]:
    return {"seed": int(args.seed), "min_group": int(args.min_group), "max_samples": int(args.max_samples),
            "permutations": int(args.permutations), "alpha": float(args.alpha), "auc_drop": float(args.auc_drop),
            "bootstrap": int(args.bootstrap), "alarm_on": list(args.alarm_on)}


def _reference(sample: Any, names: Optional[List[str]], args: Any) -> tuple:
    """(Reference, PCA, probe, attribute names) from the reference split's features."""
    from agglom.eval.extract import attribute_groups

    pca = fit_pca(sample.features, int(args.pca_dims))
    y = binary_labels(sample.labels, int(args.label_index))
    y = y if y is not None and np.all(y >= 0) else None
    oof, probe = fit_probe(sample.features, y, int(args.seed))
    groups = attribute_groups(sample.attrs, names)
    ref = Reference(project(sample.features, pca), groups, y if probe is not None else None, oof)
    return ref, pca, probe, list(groups)


def run_monitor(args: Any) -> Dict[str, Any]:
    """Assess every batch of ``args.incoming`` against ``args.reference`` and write ``report.{json,md}`` and
    ``monitor.png`` to :func:`out_dir`; returns the report (``alarm``: whether any finding alarms)."""
    from agglom.dist import dist_info
    from agglom.engine.base import pick_device
    from agglom.eval.extract import attribute_groups
    from agglom.monitor.data import batch_folders, load_model, read_features, reader_config
    from agglom.monitor.report import write_report

    _check_paths(args)
    folders = batch_folders(Path(args.incoming))
    device = pick_device(dist_info(), args.device)
    model, recipe, name = load_model(Path(args.model), device)

    def read(root: Path, split: str, what: str) -> Any:
        cfg = reader_config(recipe, root, split, args.image_size, args.num_workers)
        return read_features(model, cfg, args.embedding, device, int(args.batch_size), what)

    ref_sample = read(Path(args.reference), args.reference_split, f"reference {args.reference_split}")
    ref, pca, probe, names = _reference(ref_sample, list(args.attributes) or None, args)
    opts = _options(args)
    batches = []
    for folder in folders:
        new = read(folder.parent, folder.name, f"batch {folder.name}")
        groups = attribute_groups(new.attrs, names, reference=ref_sample.attrs)
        scores = probe.decision_function(new.features) if probe is not None else None
        labels = binary_labels(new.labels, int(args.label_index))
        result = assess_batch(ref, project(new.features, pca), groups, scores, labels, opts)
        batches.append({"batch": folder.name, "path": str(folder), "read": new.read, **result})
        print(_line(batches[-1]), flush=True)
    report = {"schema": MONITOR_SCHEMA, "model": name, "model_path": str(args.model),
              "reference": {"path": str(args.reference), "split": args.reference_split, "n": int(len(ref.projected)),
                            "labelled": ref.labels is not None, "probe": probe is not None,
                            "pca_dims": int(pca[1].shape[0]), "attributes": names},
              "embedding": args.embedding, "options": opts, "batches": batches,
              "alarm": any(f["alarm"] for b in batches for f in b["findings"])}
    write_report(out_dir(args), report)
    return report


KIND_NAMES = {"drift": "embedding drift", "score": "score shift", "proportions": "group proportions",
              "prevalence": "label prevalence", "auc": "AUC fell"}


def _strength(f: Dict[str, Any]) -> tuple:
    """Sort key, strongest first: the smaller p, then the larger effect (MMD², KS; an AUC: the larger fall)."""
    p = f.get("p")
    return (p if p is not None else 0.0, -float(f.get("effect") or 0.0), f.get("delta") or 0.0)


def alarm_summary(findings: List[Dict[str, Any]]) -> str:
    """``embedding drift: site=B, overall; score shift: site=B`` — the alarmed groups by kind, strongest first."""
    parts = []
    for kind, what in KIND_NAMES.items():
        hits = sorted((f for f in findings if f["alarm"] and f["kind"] == kind), key=_strength)
        if hits:
            parts.append(f"{what}: {', '.join(f['group'] for f in hits)}")
    return "; ".join(parts)


def _line(b: Dict[str, Any]) -> str:
    p = b["drift"].get("overall", {}).get("p")
    head = (f"agglom monitor: {b['batch']}: {b['n']} samples ({b['labelled']} labelled), embedding drift overall "
            f"p = {p:.3g}" if p is not None else f"agglom monitor: {b['batch']}: {b['n']} samples, too few to test")
    alarms = alarm_summary(b["findings"])
    return head + (f"\n  ALARM {alarms}" if alarms else "")


__all__ = ["run_monitor", "out_dir", "alarm_summary", "ALARM_EXIT", "MONITOR_SCHEMA"]
