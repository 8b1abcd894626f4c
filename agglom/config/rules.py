"""The per-key rules of the config check (:mod:`agglom.config.validate` runs them): ranges and choices, one
:class:`Rule` per dotted key in :data:`RULES`, and the helpers the cross checks share (reading a key that may not
be in a command's schema, the student's patch size). Torch-free, like the whole check."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from agglom.config import choices as C

_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    """``check(value) -> bool`` and the phrase that completes "must be ..." when it fails."""

    check: Callable[[Any], bool]
    expect: str
    options: Optional[Callable[[], Sequence[str]]] = None  # a choice: the valid names, read when checked


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def at_least(lo: float, open_: bool = False) -> Rule:
    return Rule(lambda v: _is_num(v) and (v > lo if open_ else v >= lo), f"{'>' if open_ else '>='} {lo:g}")


def between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Rule:
    def ok(v: Any) -> bool:
        return _is_num(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    return Rule(ok, f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")


def one_of(options: Union[Sequence[str], Callable[[], Sequence[str]]]) -> Rule:
    """A choice; ``options`` may be a callable (a registry), read when the rule runs."""
    def names() -> Sequence[str]:
        return options() if callable(options) else options

    return Rule(lambda v: isinstance(v, str) and v in names(), "", options=names)


def each(rule: Rule) -> Rule:
    """Every item of a list (or every value of a mapping) passes ``rule``."""
    def ok(v: Any) -> bool:
        items = v.values() if isinstance(v, (dict, DictConfig)) else v
        return all(rule.check(x) for x in items)

    return Rule(ok, f"all {rule.expect}" if rule.expect else "")


def _registry(kind: str) -> Callable[[], Sequence[str]]:
    return lambda: C.registry_names(kind)


def _non_empty(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _bin_edges(v: Any) -> bool:
    """``attr_bins``: a mapping attribute -> at least two strictly increasing finite numbers (agglom/data/binning.py
    says which edge is wrong when a pack is run without this check)."""
    if not isinstance(v, dict):
        return False
    for attr, edges in v.items():
        if not _non_empty(attr) or not isinstance(edges, list) or len(edges) < 2 or not all(map(_is_num, edges)):
            return False
        if any(b <= a for a, b in zip(edges, edges[1:])):
            return False
    return True


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
POSITIVE = at_least(0, open_=True)
NON_NEGATIVE = at_least(0)
COUNT, SIDE, WORKERS, BATCH = at_least(1), between(1, 8192), between(0, 256), between(1, 65536)  # px, procs, samples
PROBABILITY = between(0, 1)
NON_EMPTY = Rule(_non_empty, "a non-empty string")
DEVICE = Rule(lambda v: isinstance(v, str) and bool(_DEVICE.match(v)), "auto, cpu, mps, cuda or cuda:N")

# dotted key -> rule; applied wherever a command's schema has the key and its value is not None
RULES: Dict[str, Rule] = {
    "out_dir": NON_EMPTY,
    "data.root": NON_EMPTY, "data.distill_splits": each(NON_EMPTY),
    "data.train_split": NON_EMPTY, "data.val_split": NON_EMPTY, "data.test_split": NON_EMPTY,
    "data.image_size": SIDE, "data.min_image_side": COUNT,
    "data.grayscale": one_of(C.GRAYSCALE), "data.interpolation": one_of(C.INTERPOLATION),
    "data.batch_size": BATCH, "data.num_workers": WORKERS,
    "data.epoch_samples": COUNT, "data.shuffle_buffer": COUNT, "data.shuffle_buffer_mb": NON_NEGATIVE,
    "data.resolutions": each(SIDE),  # multi-resolution training; the patch and the read size: _check_resolutions
    "data.group_balance": PROBABILITY,
    "data.group_weights": each(NON_NEGATIVE),
    "data.augment.hflip": PROBABILITY,
    "data.augment.scale_min": between(0, 1, lo_open=True),
    "data.augment.ratio_jitter": NON_NEGATIVE,
    "data.augment.brightness": PROBABILITY, "data.augment.contrast": PROBABILITY,
    "data.augment.rotate": between(0, 180),
    "groups.by": NON_EMPTY,
    "groups.unknown": one_of(C.GROUPS_UNKNOWN),
    "student.model": NON_EMPTY,
    "student.std": each(POSITIVE),
    "heads.summary": one_of(_registry("head")),
    "heads.spatial": one_of(_registry("head")),
    "heads.normaliser": one_of(_registry("normaliser")),
    "heads.hidden": NON_NEGATIVE, "heads.stats_samples": COUNT,
    "heads.zscore_momentum": PROBABILITY, "heads.spatial_upsample": between(1, 8),
    "objective.summary_weight": NON_NEGATIVE, "objective.spatial_weight": NON_NEGATIVE,
    "objective.summary_cos": PROBABILITY, "objective.spatial_cos": PROBABILITY,
    "objective.smooth_l1_beta": POSITIVE,
    "objective.granularity": one_of(C.GRANULARITY),
    "objective.teacher_balance": one_of(C.TEACHER_BALANCE),
    "objective.teacher_drop": between(0, 1, hi_open=True),
    "objective.group": one_of(_registry("group objective")),
    "objective.group_scope": one_of(C.GROUP_SCOPE),
    "objective.lam": NON_NEGATIVE,
    "objective.groupdro_eta": POSITIVE,
    "objective.groupdro_size_adjust": NON_NEGATIVE,
    "objective.route_by_audit": NON_NEGATIVE,
    "objective.track_momentum": between(0, 1, lo_open=True),
    "engine.name": one_of(_registry("engine")),
    "engine.precision": one_of(C.PRECISION),
    "engine.zero_stage": between(0, 3),
    "engine.backend": one_of(C.BACKEND),
    "optim.lr": POSITIVE,
    "optim.head_lr": POSITIVE,
    "optim.min_lr_ratio": PROBABILITY,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.beta1": between(0, 1, hi_open=True),
    "optim.beta2": between(0, 1, hi_open=True),
    "optim.warmup_steps": NON_NEGATIVE,
    "optim.steps": COUNT,
    "optim.accum_steps": COUNT,
    "optim.grad_clip": NON_NEGATIVE,
    "optim.ema": between(0, 1, hi_open=True),
    "optim.max_bad_steps": COUNT,
    "log.interval": COUNT, "log.progress": one_of(C.PROGRESS),
    "log.checkpoint_interval": COUNT, "log.keep": COUNT,
    "eval.features": one_of(C.EVAL_FEATURES),
    "eval.bootstrap": NON_NEGATIVE,
    "eval.ece_binnings": Rule(lambda v: all(b in C.ECE_BINNINGS for b in v),
                              f"a list of {', '.join(C.ECE_BINNINGS)}"),
    "eval.probe_c": POSITIVE,
    "eval.threshold_method": one_of(C.THRESHOLD_METHODS),
    "eval.label_fractions": each(between(0, 1, lo_open=True)),
    "eval.seeds": COUNT, "eval.max_iter": COUNT, "eval.sam_prompt": one_of(C.SAM_PROMPTS),  # SAM-decoder prompts
    "eval.dense_steps": COUNT, "eval.dense_lr": POSITIVE, "eval.dense_grid": NON_NEGATIVE,  # the dense probe
    "eval.dense_head": one_of(C.DENSE_HEADS), "eval.dense_features": one_of(C.DENSE_FEATURES),
    "eval.resolutions": each(between(0, 16, lo_open=True)), "eval.resolution_tol": NON_NEGATIVE, "eval.resolution_jump": at_least(1),
    "sweep.utility": one_of(C.SWEEP_CLASSIFICATION + C.SWEEP_DENSE), "sweep.gap": one_of(C.SWEEP_CLASSIFICATION + C.SWEEP_DENSE),
    "sweep.levelling_margin": NON_NEGATIVE, "export.min_group_count": NON_NEGATIVE,
    # command-level keys (eval, curate, finetune, cache, teachers check)
    "batch_size": BATCH,
    "num_workers": WORKERS,
    "image_size": SIDE,
    "device": DEVICE,
    "progress": one_of(C.PROGRESS),
    "threads": NON_NEGATIVE,
    "val_interval": NON_NEGATIVE, "log_interval": COUNT,
    "method": one_of(C.CURATE_METHODS),
    "features": one_of(C.CURATE_FEATURES),
    "dedup_space": one_of(C.DEDUP_SPACES),
    "k": COUNT,
    "match": one_of(C.JOIN_MATCHES),
    "patient_attrs": one_of(C.PATIENT_ATTRS), "patient_col": NON_EMPTY,  # agglom data pack / join
    "attr_bins": Rule(_bin_edges, "a mapping attribute -> bin edges, each at least 2 strictly increasing finite "
                                  "numbers, e.g. {Age: [0, 40, 60, 80, 200]}"),  # agglom data pack
    "cache.dtype": one_of(C.CACHE_DTYPES),
    "cache.pool": COUNT, "cache.batch_size": COUNT,
    "cache.device": DEVICE,
    "cache.n": COUNT,
    "finetune.method": one_of(C.FINETUNE_METHODS), "finetune.lora_rank": COUNT, "finetune.lora_alpha": POSITIVE,
    "finetune.lora_dropout": between(0, 1, hi_open=True), "finetune.lora_targets": each(NON_EMPTY),
    # agglom export: the ONNX graph and the card's energy estimates
    "format": one_of(C.EXPORT_FORMATS), "opset": between(18, 23),
    "tdp_watts": POSITIVE, "train_watts": POSITIVE, "grid_gco2_per_kwh": NON_NEGATIVE, "latency_runs": COUNT,
    "latency_threads": between(0, 1024),
    # agglom monitor
    "embedding": one_of(C.EVAL_FEATURES), "alarm_on": Rule(lambda v: all(a in C.MONITOR_ALARMS for a in v),
                                                               f"a list of {', '.join(C.MONITOR_ALARMS)}"),
    "alpha": between(0, 1, lo_open=True, hi_open=True), "auc_drop": between(0, 1), "pca_dims": COUNT,
    "permutations": between(19, 100_000), "max_samples": between(10, 1_000_000), "min_group": COUNT,
    "bootstrap": between(0, 100_000), "reference_split": NON_EMPTY, "label_index": NON_NEGATIVE,
}

# keys whose choices are on/off: YAML 1.1 reads a bare on/off as a boolean, which a str field stores as 'True'
_ON_OFF = ("log.progress", "progress")


def _get(cfg: Any, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    except Exception:  # noqa: BLE001 - a key that cannot be selected in this schema is simply not checked
        return _ABSENT


def _plain(v: Any) -> Any:
    return OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v


def _problem(key: str, value: Any, rule: Rule) -> Optional[str]:
    value = _plain(value)
    if rule.check(value):
        return None
    if rule.options is not None:
        return f"{key}={value!r}: choose one of {', '.join(rule.options())}"
    return f"{key}={value!r}: must be {rule.expect}"


def normalise_on_off(cfg: Any) -> None:
    """Map the booleans YAML makes of bare on/off back to the words (``log.progress=off`` -> 'off')."""
    for key in _ON_OFF:
        v = _get(cfg, key)
        if v is _ABSENT:
            continue
        if v is True or v == "True":
            OmegaConf.update(cfg, key, "on", force_add=False)
        elif v is False or v == "False":
            OmegaConf.update(cfg, key, "off", force_add=False)


def patch_size_of(model: str, model_args: Any) -> Optional[int]:
    """The student's patch size: ``model_args.patch_size``, else the ``patchNN`` in a timm model name."""
    args = _plain(model_args) or {}
    if isinstance(args, dict) and args.get("patch_size"):
        p = args["patch_size"]
        return int(p[0] if isinstance(p, (list, tuple)) else p)
    m = re.search(r"patch(\d+)", model or "")
    return int(m.group(1)) if m else None


__all__ = ["Rule", "RULES", "at_least", "between", "one_of", "each", "patch_size_of", "normalise_on_off",
           "POSITIVE", "NON_NEGATIVE", "COUNT", "PROBABILITY", "NON_EMPTY", "DEVICE", "SIDE", "WORKERS", "BATCH"]
