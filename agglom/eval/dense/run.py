"""The report's optional ``dense`` section (``agglom eval eval.dense=true``): the dense probe of
:mod:`agglom.eval.dense.dense` on the student and on each audited teacher, per attribute, and the rows of
``dense_predictions.csv`` (one per masked test sample and model, so every number can be recomputed).

Section shape (documented in :mod:`agglom.eval.report.schema` too)::

    "dense": {
      "protocol": "...", "mask_size": [H, W],
      "masks": {"train"|"val"|"test": {"samples", "masked", "with_foreground"}},
      "models": {"<model>": {"kind", "features", "feature_dim", "grid": [h, w], "max_grid", "threshold", "val_dice",
                             "n_train", "n_test", "empty_masks": {"n", "with_prediction"},
                             "attributes": {"<attribute>": <dense.dice_fairness result>}}}
    }
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from agglom.data.masks import IGNORE
from agglom.data.patients import PATIENT, patient_ids
from agglom.eval.dense.dense import PROTOCOL, dice_fairness, fit_and_score, has_foreground, has_mask
from agglom.eval.extract import SplitFeatures, attribute_groups


def check_dense_data(cfg: Any, sheet: Optional[Mapping[str, Any]]) -> None:
    """Refuse ``eval.dense=true`` before any work when the dataset's datasheet (``sheet``, None without one) says it
    has no masks (a dataset without a datasheet is checked after reading: no masked training sample)."""
    from agglom.config.load import ConfigError

    if sheet is None:
        return
    masked = {s: (sheet.get("masks") or {}).get("splits", {}).get(s, {}).get("samples", 0)
              for s in (cfg.data.train_split, cfg.data.val_split, cfg.data.test_split)}
    empty = [s for s, n in masked.items() if not n]
    if empty:
        raise ConfigError(f"eval.dense=true: the dataset has no segmentation masks in split(s) {', '.join(empty)} "
                          "(its datasheet's 'masks' section); pack masks with `agglom data pack mask_col=|masks=`")


#: test samples drawn in the overlay figure per group of the first attribute
OVERLAY_PER_GROUP = 3


def overlay_indices(masks: np.ndarray, groups: np.ndarray, per_group: int = OVERLAY_PER_GROUP) -> np.ndarray:
    """The first ``per_group`` test samples with foreground of each group (sorted group names): the same samples
    for every model, so the figure compares models on one lesion per row."""
    fg = has_foreground(masks)
    return np.asarray([i for g in sorted(set(map(str, groups))) for i in
                       np.flatnonzero(fg & (np.asarray(groups).astype(str) == g))[:per_group]], dtype=int)


def _student_features(ev: Any) -> str:
    """What the student's dense probe read: its spatial adapters (eval.dense_features=adapters) or its patch tokens."""
    return "spatial adapter maps" if getattr(ev, "dense_features", "tokens") == "adapters" else "patch tokens"


def _model_section(name: str, kind: str, splits: Dict[str, SplitFeatures], ev: Any, attr_names: Optional[List[str]],
                   seed: int, indexer: Any, specs: Sequence[str],
                   exclude_unknown: bool, overlay_attribute: Optional[str] = None,
                   ) -> Tuple[Dict[str, Any], List[Dict[str, Any]], Dict[str, Any]]:
    from agglom.config.load import ConfigError

    tr, va, te = splits["train"], splits["val"], splits["test"]
    if tr.spatial is None or tr.masks is None:
        raise ValueError(f"{name}: no spatial features were extracted")
    try:
        res = fit_and_score((tr.spatial, tr.masks), (va.spatial, va.masks), (te.spatial, te.masks),
                            steps=int(ev.dense_steps), lr=float(ev.dense_lr), seed=seed, head=str(ev.dense_head))
    except ValueError as e:
        raise ConfigError(f"eval.dense: {name}: {e}") from e
    masked, fg = has_mask(te.masks), has_foreground(te.masks)
    groups = attribute_groups(te.attrs, attr_names or None, reference=tr.attrs, indexer=indexer, specs=specs)
    patients = patient_ids(te.attrs)
    pat_fg = None if patients is None else patients[fg]
    attributes = {a: dice_fairness(res["dice"][fg], res["iou"][fg], g[fg], exclude_unknown=exclude_unknown,
                                   n_boot=int(ev.bootstrap), seed=seed, patients=pat_fg) for a, g in groups.items()}
    empty = masked & ~fg
    any_pred = res["pred_area"] > 0
    section = {"kind": kind, "features": _student_features(ev) if kind == "student" else "spatial map", "head": ev.dense_head,
               "feature_dim": int(tr.spatial.shape[1]), "grid": [int(v) for v in tr.spatial.shape[-2:]],
               "max_grid": int(ev.dense_grid),
               "threshold": res["threshold"], "val_dice": res["val_curve"].get(f"{res['threshold']:g}"),
               "n_train": res["n_train"], "n_test": int(fg.sum()),
               "empty_masks": {"n": int(empty.sum()),
                               "with_prediction": float(any_pred[empty].mean()) if empty.any() else None},
               "attributes": attributes}
    valid = (te.masks != IGNORE).reshape(len(te.masks), -1)
    true_area = (te.masks > 0).reshape(len(te.masks), -1).sum(1) / np.maximum(valid.sum(1), 1)
    rows = []
    for i in np.flatnonzero(masked):
        rows.append({"model": name, "key": te.keys[i], "split": "test", "evaluated": int(fg[i]),
                     "dice": float(res["dice"][i]), "iou": float(res["iou"][i]), "true_area": float(true_area[i]),
                     "pred_area": float(res["pred_area"][i]), "threshold": float(res["threshold"]),
                     **{a: g[i] for a, g in groups.items()},
                     **({} if patients is None else {PATIENT: patients[i]})})
    overlay: Dict[str, Any] = {}
    if groups:
        attr = overlay_attribute if overlay_attribute in groups else next(iter(groups))
        idx = overlay_indices(te.masks, groups[attr])
        pred = res["probe"].predict(te.spatial[idx], tuple(te.masks.shape[-2:])) >= res["threshold"]
        overlay = {"attribute": attr, "keys": [te.keys[i] for i in idx], "groups": [str(groups[attr][i]) for i in idx],
                   "masks": te.masks[idx], "pred": pred, "dice": res["dice"][idx]}
    return section, rows, overlay


def dense_report(splits_of: Dict[str, Dict[str, SplitFeatures]], kinds: Dict[str, str], ev: Any,
                 attr_names: Optional[List[str]], seed: int, indexer: Any, specs: Sequence[str],
                 exclude_unknown: bool, overlay_attribute: Optional[str] = None,
                 ) -> Tuple[Dict[str, Any], List[Dict[str, Any]], Dict[str, Any]]:
    """``(section, rows, overlays)`` for every model whose splits carry spatial features (``kinds``: model ->
    kind); ``overlays``: ``{model: {"keys", "groups", "masks", "pred", "dice"}}`` of the same few test samples, for
    :func:`agglom.eval.report.plots.plot_dense_overlays`, grouped by ``overlay_attribute`` (default: the first)."""
    models: Dict[str, Any] = {}
    rows: List[Dict[str, Any]] = []
    overlays: Dict[str, Any] = {}
    first = None
    for name, splits in splits_of.items():
        if splits["train"].spatial is None:
            continue
        first = first or splits
        models[name], r, overlays[name] = _model_section(name, kinds.get(name, "teacher"), splits, ev, attr_names,
                                                         seed, indexer, specs, exclude_unknown, overlay_attribute)
        rows += r
    masks: Dict[str, Any] = {}
    size: List[int] = []
    if first is not None:
        for role, sf in first.items():
            masks[role] = {"samples": len(sf.keys), "masked": int(has_mask(sf.masks).sum()),
                           "with_foreground": int(has_foreground(sf.masks).sum())}
        size = [int(v) for v in first["train"].masks.shape[-2:]]
    return {"protocol": PROTOCOL, "mask_size": size, "masks": masks, "models": models}, rows, overlays


__all__ = ["dense_report", "check_dense_data", "overlay_indices", "OVERLAY_PER_GROUP"]
