"""The report's versioned JSON schema: the skeleton (:func:`new_report`) and its validation (:func:`validate_report`:
the report-level keys here, each section's part by that section's ``check``, :mod:`agglom.eval.sections`).

Report schema ``"agglom.eval/2"`` (a plain dict; undefined numbers are ``None`` / ``null``)::

    {
      "schema": "agglom.eval/2",
      "created": "2025-01-01T00:00:00Z",          # optional, filled by write_report
      "primary": "student",                        # the model the report is about
      "models": {
        "<model>": {
          "kind": "student" | "teacher" | "baseline",
          "attributes": {"<attribute or proxy grouping>": <binary_group_metrics or multilabel_group_metrics result>},
          "validation": {"<attribute>": <metrics.headline on the validation split>},
          "label_efficiency": <probe.label_efficiency output>,   # optional; metric_fn returning flat scalars
          "probe": {...}                                          # optional: C, threshold_method, thresholds ...
        }
      },
      "fidelity": {"<attribute>": {"<teacher>/<output>": <metrics.group_mean_summary>}},  # optional: global R²
      "fidelity_measure": "...",                                                       # what "fidelity" holds
      "fidelity_cosine": {same shape as fidelity},                                     # optional, secondary
      "fidelity_functional": {"<teacher>": <fidelity.functional_fidelity result>},     # optional
      "comparison": <compare.compare_predictions result>,                               # optional (reference=)
      "zero_shot": {                                                                    # optional (zero_shot=)
        "prompts": {"<class>": ["<prompt>", ...]},      # multi-label: {"<label>": {"0": [...], "1": [...]}}
        "scoring": "...",                               # how prompts and embeddings become scores
        "models": {
          "<model>@<teacher>" | "teacher:<teacher>": {
            "kind": "student" | "teacher", "via": "<teacher whose text tower scored it>",
            "attributes": {"<attribute>": <binary_group_metrics or multilabel_group_metrics result>},
            "validation": {"<attribute>": <metrics.headline on the validation split>},
            "thresholds": {"fixed_0.5": ..., "val_<method>": ...}, "n_val": int, "n_test": int,
            "logit_scale": float, "logit_bias": float | null, "text_tower_digest": "<card digest>"
          }
        }
      },
      "dense": {                                                                        # optional (eval.dense)
        "protocol": "...", "mask_size": [H, W],
        "masks": {"train"|"val"|"test": {"samples", "masked", "with_foreground"}},
        "models": {"<model>": {"kind", "features", "feature_dim", "grid", "threshold", "val_dice", "n_train",
                               "n_test", "empty_masks": {"n", "with_prediction"},
                               "attributes": {"<attribute>": <dense.dice_fairness result>}}}
      },
      "sam_prompts": {                                                                  # optional (eval.sam_prompts)
        "protocol": "...", "prompt": "box" | "point" | "box+point", "split", "mask_size", "samples",
        "without_foreground", "teachers": {"<SAM teacher>": {"decoder", "embedding", "adapter_grid", "resampled", "n",
          "embedding_cosine", "models": {"teacher:<t>" | "<student>": {"encoder", "attributes": {"<attribute>":
          <dense.dice_fairness result>}}}, "agreement": {"attributes": {"<attribute>": <dice_fairness result>}}}}
      },
      "resolution": {                                                                   # optional (eval.resolutions)
        "base": px, "multiples": [m], "sizes": [px], "read_at": px, "measure": "...",
        "fidelity": {"<teacher>/<output>": [R² per size]},
        "probe": {"auc": [per size], "worst_group_auc": {"<attribute>": [per size]}},
        "within_tol": {"<curve>": [bool | null per size]}, "switches": [{"curve", "from", "to", "change", ...}],
        "validated_range": [lo px, hi px] | null, "tol": float, "jump": float, "rule": "..."
      },
      "pareto": <pareto.front_summary result>,                                          # optional
      "data": {"train"|"val"|"test": {"samples": n read, "expected": n listed or null,   # optional: what the
               "skipped": {reason: n}, "noted": {reason: n}, "examples": {...}}},      # readers left out
      "meta": {...}                                                                     # optional, free-form
    }

Version 2 (over 1): ``fidelity`` holds the global-normalised R² instead of the cosine (which moved to
``fidelity_cosine``); intervals are BCa; ``fidelity_functional`` and ``comparison`` are new. ``zero_shot``
(zero-shot classification through each CLIP-family teacher's text tower, :mod:`agglom.eval.zero_shot.zero_shot`: the
student through its adapter for that teacher, the teacher itself through its own embedding, each with the same
per-group metrics and intervals as ``models``) is an optional section of version 2: reports without it stay valid.
So is ``dense`` (:mod:`agglom.eval.dense.dense`: a linear 1x1 probe on each model's spatial features against the samples'
segmentation masks; Dice and IoU overall and per group, Dice gap, worst group, std and skewness across groups and
both equity-scaled Dice forms, with BCa intervals; per-sample Dice in ``dense_predictions.csv``). So is
``sam_prompts`` (:mod:`agglom.eval.sam.run`: prompted segmentation through each SAM teacher's own decoder on the
teacher's embedding and on the student's adapter output, per-group Dice of both and their agreement; per-sample
numbers in ``sam_predictions.csv``). So is ``resolution`` (:mod:`agglom.eval.resolution.resolution`: the probe and the
fidelity of the student at other input sizes, the mode-switch flags and the validated range of sizes).

Which module writes and checks each part: ``models`` and ``comparison`` :mod:`agglom.eval.classification.section`,
``fidelity*`` :mod:`agglom.eval.fidelity.section`, ``zero_shot`` :mod:`agglom.eval.zero_shot.section`, ``dense``
:mod:`agglom.eval.dense.section`, ``sam_prompts`` :mod:`agglom.eval.sam.section`, ``resolution``
:mod:`agglom.eval.resolution.section`; ``pareto`` (the sweep's front), ``data`` and ``meta`` are checked here.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from agglom.eval.section import ReportError, part_of
from agglom.eval.sections import in_report_order

__all__ = ["SCHEMA", "ReportError", "new_report", "validate_report"]

SCHEMA = "agglom.eval/2"


def new_report(primary: str, models: Optional[Mapping[str, Any]] = None, **extra: Any) -> Dict[str, Any]:
    """A report skeleton: ``{"schema", "primary", "models", **extra}``."""
    return {"schema": SCHEMA, "primary": primary, "models": dict(models or {}), **extra}


def validate_report(d: Any) -> Dict[str, Any]:
    """Check a report against the current schema (:data:`SCHEMA`); returns it, or raises :class:`ReportError` listing
    problems: the report-level keys, then each section's part (its ``check``) in report order."""
    problems: List[str] = []
    if not isinstance(d, Mapping):
        raise ReportError(["report is not a dict"])
    if d.get("schema") != SCHEMA:
        problems.append(f"schema: expected {SCHEMA!r}, got {d.get('schema')!r}")
    models = d.get("models")
    if not isinstance(models, Mapping) or not models:
        problems.append("models: expected a non-empty dict")
    if d.get("primary") not in (models if isinstance(models, Mapping) else {}):
        problems.append(f"primary: {d.get('primary')!r} is not one of the models")
    for section in in_report_order():
        part = part_of(section, d)
        if not part:
            continue
        try:
            section.check(part)
        except ReportError as e:
            problems += e.problems
    p = d.get("pareto")
    if p is not None and not (isinstance(p, Mapping) and "points" in p and "hypervolume" in p):
        problems.append("pareto: expected a front_summary dict")
    for split, info in (d.get("data") or {}).items():
        if not (isinstance(info, Mapping) and "samples" in info and isinstance(info.get("skipped"), Mapping)):
            problems.append(f"data.{split}: expected {{samples, expected, skipped, noted}}")
    if problems:
        raise ReportError(problems)
    return dict(d)
