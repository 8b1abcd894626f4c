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

from typing import Any, Callable, Dict, Iterable, List, Optional

from omegaconf import ListConfig

from agglom.config import choices as C
from agglom.config.resolution_checks import check_resolutions
from agglom.config.rules import (  # noqa: F401 - the rules' names are part of this module's interface
    _ABSENT,
    RULES,
    Rule,
    _get,
    _is_num,
    _non_empty,
    _plain,
    _problem,
    at_least,
    between,
    each,
    normalise_on_off,
    one_of,
    patch_size_of,
)
from agglom.errors import ConfigError


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


CROSS_CHECKS: List[Callable[[Any], List[str]]] = [
    _check_patch, _check_teachers, _check_group_specs, _check_stats, _check_group_weights, _check_name, _check_sweep,
    _check_no_groups, check_resolutions,
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
    normalise_on_off(cfg)
    found = problems(cfg)
    if len(found) == 1:
        raise ConfigError(found[0])
    if found:
        raise ConfigError(f"{len(found)} problems in the config:\n  - " + "\n  - ".join(found))
    return cfg


__all__ = ["Rule", "RULES", "CROSS_CHECKS", "validate", "problems", "normalise_on_off", "patch_size_of",
           "at_least", "between", "one_of", "each"]
