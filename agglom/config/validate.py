"""One pass over a loaded config that checks every value before anything is built or written.

`load_config` runs it on every command's config, so a bad value fails in milliseconds with exit code 2 and a
message that names the key, the value and what is allowed — never as a traceback after the teachers were built.
It checks

- ranges (``optim.lr > 0``, ``data.batch_size >= 1``, probabilities in [0, 1], ...) — :data:`RULES`;
- choices (``objective.granularity``, ``heads.summary``, ``engine.name``, ...), listed from
  :mod:`agglom.config.choices` and the plugin registries;
- relations between keys (``data.image_size`` divisible by the student's patch size, teacher entries, group
  specs, the swept key and its values) — :data:`CROSS_CHECKS`.

A rule applies to any command whose schema has the key (`train`, `sweep`, `cache`, `finetune`, `curate`, `eval`).
The pass reads no file (whether data, teachers or checkpoints exist is :mod:`agglom.train.preflight`'s job) and
imports no torch, to stay fast.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

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
    "cache.dtype": one_of(C.CACHE_DTYPES),
    "cache.pool": COUNT, "cache.batch_size": COUNT,
    "cache.device": DEVICE,
    "cache.n": COUNT,
    "finetune.method": one_of(C.FINETUNE_METHODS), "finetune.lora_rank": COUNT, "finetune.lora_alpha": POSITIVE,
    "finetune.lora_dropout": between(0, 1, hi_open=True), "finetune.lora_targets": each(NON_EMPTY),
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


# --------------------------------------------------------------------------- relations between keys
def patch_size_of(model: str, model_args: Any) -> Optional[int]:
    """The student's patch size: ``model_args.patch_size``, else the ``patchNN`` in a timm model name."""
    args = _plain(model_args) or {}
    if isinstance(args, dict) and args.get("patch_size"):
        p = args["patch_size"]
        return int(p[0] if isinstance(p, (list, tuple)) else p)
    m = re.search(r"patch(\d+)", model or "")
    return int(m.group(1)) if m else None


def _check_patch(cfg: Any) -> List[str]:
    model, size = _get(cfg, "student.model"), _get(cfg, "data.image_size")
    args = _get(cfg, "student.model_args")
    if model is _ABSENT:  # finetune: the encoder is model= at the top level
        model, args = _get(cfg, "model"), _get(cfg, "model_args")
    if model is _ABSENT or model is None or not _is_num(size) or size < 1:
        return []
    args = _plain(args) if args is not _ABSENT else {}
    if isinstance(args, dict) and args.get("dynamic_img_pad"):
        return []
    p = patch_size_of(str(model), args)
    if p and size % p:
        lo, hi = size - size % p, size - size % p + p
        src = "model_args.patch_size" if isinstance(args, dict) and args.get("patch_size") else str(model)
        use = f"{lo} or {hi}" if lo else f"{hi}"
        return [f"data.image_size={size}: must be a multiple of the student's patch size {p} ({src}); "
                f"use {use}, or student.model_args.dynamic_img_pad=true"]
    return []


def _check_teachers(cfg: Any) -> List[str]:
    entries = _get(cfg, "teachers")
    if entries is _ABSENT or not isinstance(entries, ListConfig):
        return []
    out, seen = [], set()
    for i, e in enumerate(entries):
        where = f"teachers[{i}]"
        if not _non_empty(e.name):
            out.append(f"{where}.name: every teacher needs a card name or path (agglom teachers list)")
            continue
        if e.name in seen:
            out.append(f"{where}.name={e.name!r}: the teacher is listed twice")
        seen.add(e.name)
        if not _is_num(e.weight) or e.weight < 0:
            out.append(f"{where}.weight={e.weight!r}: must be >= 0")
        if "batch_size" in e and (not _is_num(e.batch_size) or e.batch_size < 0):
            out.append(f"{where}.batch_size={e.batch_size!r}: must be >= 0 (0 = the whole batch)")
        if not e.summary and not e.spatial:
            out.append(f"{where} ({e.name}): summary and spatial are both false, so it would teach nothing")
    return out


def _check_group_specs(cfg: Any) -> List[str]:
    specs = _get(cfg, "groups.specs")
    if specs is _ABSENT or not isinstance(specs, ListConfig):
        return []
    out = []
    for i, s in enumerate(specs):
        where = f"groups.specs[{i}]"
        if not (_non_empty(s.name) or _non_empty(s.attr) or len(s.attrs)):
            out.append(f"{where}: a group spec needs a name, an attr or attrs")
        if _non_empty(s.attr) and len(s.attrs):
            out.append(f"{where} ({s.name}): give either attr (with optional bins) or attrs (an intersection), not both")
        bins = list(s.bins)
        if bins and (len(bins) < 2 or any(b >= c for b, c in zip(bins, bins[1:]))):
            out.append(f"{where}.bins={bins}: needs at least two strictly increasing edges")
    return out


def _check_stats(cfg: Any) -> List[str]:
    out = []
    for key in ("student.mean", "student.std", "data.mean", "data.std", "mean", "std"):
        v = _get(cfg, key)
        if v is _ABSENT or v is None:
            continue
        v = list(_plain(v))
        if key.startswith("data.") and not v:  # finetune: empty = the card's
            continue
        if len(v) not in (1, 3) or not all(_is_num(x) for x in v):
            out.append(f"{key}={v}: must be 1 or 3 numbers (one per channel)")
        elif key.endswith("std") and any(x <= 0 for x in v):
            out.append(f"{key}={v}: every std must be > 0")
    return out


def _check_group_weights(cfg: Any) -> List[str]:
    w = _get(cfg, "data.group_weights")
    if w is _ABSENT or not w:
        return []
    vals = list(_plain(w).values())
    if all(_is_num(x) for x in vals) and not any(x > 0 for x in vals):
        return [f"data.group_weights={_plain(w)}: at least one group needs a weight > 0"]
    return []


def _check_name(cfg: Any) -> List[str]:
    name = _get(cfg, "name")
    if name is _ABSENT or _get(cfg, "out_dir") is _ABSENT:
        return []
    parts = str(name).replace("\\", "/").split("/")
    if not _non_empty(name) or str(name).startswith("/") or any(p in ("", ".", "..") for p in parts):
        return [f"name={name!r}: must be a relative folder name under out_dir (no '..', not empty)"]
    return []


def _check_sweep(cfg: Any) -> List[str]:
    key, values = _get(cfg, "sweep.key"), _get(cfg, "sweep.lams")
    if key is _ABSENT:
        return []
    out = []
    if _get(cfg, key) is _ABSENT:
        out.append(f"sweep.key={key!r}: not a key of the recipe (e.g. objective.lam, data.group_balance)")
    elif key in RULES and values is not _ABSENT:
        rule = RULES[key]
        bad = [v for v in _plain(values) if not rule.check(v)]
        if bad:
            out.append(f"sweep.lams={_plain(values)}: {key} must be {rule.expect}; {bad} is not")
    objectives = _get(cfg, "sweep.objectives")
    if objectives is not _ABSENT:
        known = C.registry_names("group objective")
        unknown = [o for o in objectives if o not in known]
        if unknown:
            out.append(f"sweep.objectives: {unknown} unknown; choose from {', '.join(known)}")
    return out


def _check_no_groups(cfg: Any) -> List[str]:
    """``groups.by=none`` (one group, for data without attributes) leaves nothing for parity or balancing."""
    if _get(cfg, "groups.by") != "none":
        return []
    out = []
    group = _get(cfg, "objective.group")
    if group not in (_ABSENT, None, "erm"):
        out.append(f"objective.group={group!r} needs groups, and groups.by=none puts every sample in one: use "
                   "objective.group=erm, or make proxy groups with `agglom curate` and set groups.by=proxy")
    bal, weights = _get(cfg, "data.group_balance"), _get(cfg, "data.group_weights")
    if (_is_num(bal) and bal > 0) or _get(cfg, "data.group_balanced") is True or (weights not in (_ABSENT, None)
                                                                               and len(weights)):
        out.append("data.group_balance/group_balanced/group_weights need groups; groups.by=none has one")
    return out


def _check_resolutions(cfg: Any) -> List[str]:
    from agglom.config.resolution_checks import check_resolutions  # kept apart: this module is at its size limit

    return check_resolutions(cfg)


CROSS_CHECKS: List[Callable[[Any], List[str]]] = [
    _check_patch, _check_teachers, _check_group_specs, _check_stats, _check_group_weights, _check_name, _check_sweep,
    _check_no_groups, _check_resolutions,
]


def problems(cfg: Any, rules: Optional[Dict[str, Rule]] = None,
             cross: Optional[Iterable[Callable[[Any], List[str]]]] = None) -> List[str]:
    """Every problem of ``cfg``, one line each (empty: the config is valid)."""
    out: List[str] = []
    for key, rule in (RULES if rules is None else rules).items():
        value = _get(cfg, key)
        if value is _ABSENT or value is None:
            continue
        p = _problem(key, value, rule)
        if p:
            out.append(p)
    for check in (CROSS_CHECKS if cross is None else cross):
        out.extend(check(cfg))
    return out


def validate(cfg: Any) -> Any:
    """Normalise on/off words, then raise :class:`ConfigError` (exit 2) listing every problem; returns ``cfg``."""
    from agglom.config.load import ConfigError

    normalise_on_off(cfg)
    found = problems(cfg)
    if len(found) == 1:
        raise ConfigError(found[0])
    if found:
        raise ConfigError(f"{len(found)} problems in the config:\n  - " + "\n  - ".join(found))
    return cfg


__all__ = ["Rule", "RULES", "CROSS_CHECKS", "validate", "problems", "normalise_on_off", "patch_size_of",
           "at_least", "between", "one_of", "each"]
