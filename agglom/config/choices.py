"""The valid values of every choice-valued key, in one torch-free place, so a config is checked in milliseconds.

Two kinds:

- closed sets (``data.grayscale``, ``objective.granularity``, ...): the tuples below are the source of truth and
  the modules that act on the value import them from here;
- plugin registries (heads, normalisers, group objectives, engines): the registry lives beside its classes,
  which need torch. :func:`registry_names` returns the built-in names declared here, plus whatever the live
  registry holds when its module is already imported (a plugin registered from Python is accepted). A test
  checks that the built-in names equal what each registry holds after import, so the two cannot drift.
"""
from __future__ import annotations

import importlib
import sys
from typing import Dict, Tuple

GRAYSCALE = ("replicate", "keep")
INTERPOLATION = ("bicubic", "bilinear", "nearest")
GRANULARITY = ("token", "image")
TEACHER_BALANCE = ("fixed", "loss_scale")
GROUP_SCOPE = ("teacher", "sample")
GROUPS_UNKNOWN = ("exclude", "include")
PRECISION = ("auto", "fp32", "bf16")
BACKEND = ("auto", "nccl", "gloo")
PROGRESS = ("auto", "on", "off")
EVAL_FEATURES = ("summary", "pooled", "adapters")
THRESHOLD_METHODS = ("youden", "f1")
ECE_BINNINGS = ("range10", "unit15")
CACHE_DTYPES = ("fp16", "int8", "fp32")
SAM_PROMPTS = ("box", "point", "box+point")  # eval.sam_prompt: what agglom.eval.sam.run derives from each mask
FINETUNE_METHODS = ("full", "lora")
EXPORT_FORMATS = ("timm", "onnx")  # agglom export format= (onnx: + student.onnx, agglom.export.onnx_export)
#: agglom monitor alarm_on=: which findings raise the alarm (agglom.monitor.run)
MONITOR_ALARMS = ("drift", "score", "proportions", "prevalence", "auc")
DENSE_HEADS = ("linear", "conv")  # eval.dense_head (agglom.eval.dense.dense)
DENSE_FEATURES = ("tokens", "adapters")  # eval.dense_features (agglom.eval.extract.student_spatial_encoder)
#: sweep.utility / sweep.gap: the classification headline (agglom.eval.metrics.headline) or the dense probe's Dice
#: statistics (agglom.eval.dense.dense.STAT_KEYS; the point then runs `eval.dense=true`); a test keeps them in sync
SWEEP_CLASSIFICATION = ("auc", "worst_group_auc", "auc_gap", "es_auc", "ece_gap", "dpd", "eod_worst_case", "eod_mean",
                        "eod_fairmedfm_score", "eo_tpr_gap", "fnr_gap", "fpr_gap")
SWEEP_DENSE = ("dice", "iou", "worst_group_dice", "best_group_dice", "dice_gap", "dice_std", "dice_skewness",
               "es_dice", "es_dice_std")


def input_channels(grayscale: str) -> int:
    """Channels of the student's input for ``data.grayscale``: 1 when grayscale is kept, else 3 (replicated)."""
    return 1 if grayscale == "keep" else 3
CURATE_METHODS = ("kmeans", "per_class", "hierarchical")
CURATE_FEATURES = ("summary", "pooled", "both")
DEDUP_SPACES = ("raw", "center", "zscore")
RESUME_WORDS = ("auto", "never")
JOIN_MATCHES = ("auto", "key", "path", "name", "stem")
#: `agglom data pack patient_attrs=`: an attribute that differs between one patient's images (agglom.data.patients)
PATIENT_ATTRS = ("per_image", "first", "refuse")

# registry kind -> (module, its agglom.registry.Registry, built-in names)
REGISTRIES: Dict[str, Tuple[str, str, Tuple[str, ...]]] = {
    "head": ("agglom.model.heads", "HEADS", ("attn", "mlp", "resmlp")),
    "normaliser": ("agglom.model.normalisers", "NORMALISERS", ("none", "phis", "zscore")),
    "group objective": ("agglom.objective.groups", "GROUP_OBJECTIVES",
                        ("balanced", "catchup", "erm", "excess", "gap", "groupdro", "variance")),
    "engine": ("agglom.engine.base", "ENGINES", ("deepspeed", "torch")),
}


#: each built-in group objective's one line for --help (its class's ``note`` in agglom/objective/groups.py; a test
#: keeps the two equal), so the schema's help text needs no torch and no import up the floors
GROUP_OBJECTIVE_NOTES: Dict[str, str] = {
    "balanced": "mean of group means",
    "catchup": "one-sided: pushes groups above the group mean or above their reference",
    "erm": "",
    "excess": "one-sided: pushes only groups above their reference",
    "gap": "symmetric: can level down",
    "groupdro": "online worst-group weights; with a reference, excess-loss weights",
    "variance": "symmetric: can level down",
}


def describe_group_objectives() -> str:
    """``objective.group``'s choices with their notes (what `--help` shows); a plugin objective registered at run
    time is listed with the note its class carries."""
    module, attr, _ = REGISTRIES["group objective"]
    live = getattr(sys.modules[module], attr) if module in sys.modules else {}

    def note(name: str) -> str:
        return GROUP_OBJECTIVE_NOTES[name] if name in GROUP_OBJECTIVE_NOTES else getattr(live[name], "note", "")

    return " | ".join(n + (f" ({note(n)})" if note(n) else "") for n in registry_names("group objective"))


def live_registry(kind: str) -> Tuple[str, ...]:
    """The names the registry of ``kind`` holds, importing its module (torch) if needed."""
    module, attr, _ = REGISTRIES[kind]
    return tuple(sorted(getattr(importlib.import_module(module), attr)))


def registry_names(kind: str) -> Tuple[str, ...]:
    """Built-in names of a registry, plus any registered at run time when the registry's module is loaded."""
    module, _, builtin = REGISTRIES[kind]
    names = set(builtin)
    if module in sys.modules:
        names.update(live_registry(kind))
    return tuple(sorted(names))


__all__ = ["GRAYSCALE", "INTERPOLATION", "GRANULARITY", "TEACHER_BALANCE", "GROUP_SCOPE", "GROUPS_UNKNOWN",
           "PRECISION", "BACKEND", "PROGRESS", "EVAL_FEATURES", "THRESHOLD_METHODS", "ECE_BINNINGS", "CACHE_DTYPES", "SAM_PROMPTS",
           "SWEEP_CLASSIFICATION", "SWEEP_DENSE", "DENSE_HEADS", "CURATE_METHODS", "CURATE_FEATURES", "DEDUP_SPACES", "RESUME_WORDS", "JOIN_MATCHES", "PATIENT_ATTRS", "REGISTRIES", "registry_names",
           "live_registry", "GROUP_OBJECTIVE_NOTES", "describe_group_objectives"]
