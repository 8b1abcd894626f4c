"""The teacher audit on the validation split, per group: what automatic teacher × group routing is built from.

For every teacher: its summary features on the train split fit a logistic probe (the same protocol as
`agglom eval`, :func:`agglom.metrics.probe.fit_linear_probe`); the probe scores the val split; the AUC within each
group is that teacher's measured usefulness for the group. Cached teachers are read from their feature cache (by
sample key), others run online (:func:`agglom.cache.reader.teacher_output`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import torch

from agglom.config.load import ConfigError


def teacher_group_auc(cfg: Any, teachers: Mapping[str, Any], group_names: Sequence[str],
                      device: torch.device) -> Dict[str, Any]:
    """``{"auc": [T][G] (None where undefined), "teachers": [...], "groups": [...], "n_val": {group: n}}``: each
    teacher's val AUC within each group (a multi-label task: the mean over labels)."""
    from agglom.cache.reader import teacher_output
    from agglom.data.readers import eval_loader
    from agglom.metrics.group_stats import rank_auc
    from agglom.metrics.probe import fit_linear_probe

    names = list(teachers)

    @torch.no_grad()
    def features(split: str):
        feats: Dict[str, List[np.ndarray]] = {n: [] for n in names}
        labels, groups = [], []
        for batch in eval_loader(cfg, split, whole=True):
            x = batch["image"].to(device)
            for n in names:
                feats[n].append(teacher_output(teachers[n], x, batch["key"]).summary.float().cpu().numpy())
            labels.append(batch["label"].numpy())
            groups.append(batch["group"].numpy())
        if not labels:
            raise ConfigError(f"objective.route_by_audit: the {split!r} split is empty")
        return {n: np.concatenate(v) for n, v in feats.items()}, np.concatenate(labels), np.concatenate(groups)

    ftr, ytr, _ = features(cfg.data.train_split)
    fva, yva, gva = features(cfg.data.val_split)
    ytr2, yva2 = ytr.reshape(len(ytr), -1), yva.reshape(len(yva), -1)
    if not set(np.unique(ytr2).tolist()) <= {0, 1}:
        raise ConfigError("objective.route_by_audit: needs binary (or multi-label binary) labels to audit teachers")
    auc: List[List[Any]] = []
    for n in names:
        probe = fit_linear_probe(ftr[n], ytr2 if ytr2.shape[1] > 1 else ytr2[:, 0], fva[n],
                                 yva2 if yva2.shape[1] > 1 else yva2[:, 0], fva[n], C=float(cfg.eval.probe_c),
                                 max_iter=int(cfg.eval.max_iter), seed=0)
        scores = probe.val_scores.reshape(len(yva2), -1)
        row = []
        for gi in range(len(group_names)):
            m = gva == gi
            vals = [rank_auc(yva2[m, j], scores[m, j]) for j in range(yva2.shape[1])] if m.any() else []
            vals = [v for v in vals if np.isfinite(v)]
            row.append(float(np.mean(vals)) if vals else None)
        auc.append(row)
    return {"auc": auc, "teachers": names, "groups": list(group_names),
            "n_val": {g: int(np.sum(gva == i)) for i, g in enumerate(group_names)}}


def audit_routing(cfg: Any, teachers: Mapping[str, Any], group_names: Sequence[str], device: torch.device,
                  run_dir: Any) -> Dict[str, Any]:
    """The automatic routing of a run: ``{"weights": [T][G], "auc": [T][G], ...}``, reused from
    ``<run_dir>/routing.json`` when it was computed for the same teachers, groups and strength (a resumed run
    routes exactly as before), else computed from :func:`teacher_group_auc`."""
    import json
    from pathlib import Path

    from agglom.objective.routing import routing_from_audit

    strength = float(cfg.objective.route_by_audit)
    path = Path(run_dir) / "routing.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("teachers") == list(teachers) and old.get("groups") == list(group_names) \
                and old.get("strength") == strength:
            return old
    audit = teacher_group_auc(cfg, teachers, group_names, device)
    weights = routing_from_audit(audit["auc"], strength)
    return {**audit, "strength": strength, "weights": weights.tolist(),
            "rule": "w = 1 + strength * max(0, r - 1), r = (AUC - 0.5)+ / mean over teachers of (AUC - 0.5)+ "
                    "(validation AUC of each teacher's own probe within each group)"}
