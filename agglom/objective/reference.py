"""Per-group reference losses for the one-sided objectives (``excess``) and excess-loss GroupDRO: what a reference
run (typically the λ = 0 / ERM run of the same recipe) reached on each group, read from its ``metrics.jsonl``.

With ``objective.group_scope=teacher`` the reference of teacher t on group g is the run's final running mean
(``ema/<teacher>/<group>``, :class:`~agglom.objective.tracking.GroupTeacherTracker`); with ``sample`` it is the
mean of the last logged ``group/<group>`` values of the combined loss.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from agglom.config.load import ConfigError
from agglom.data.limits import MAX_JSON_BYTES, sample_json

Ref = List[Optional[float]]


def _records(run_dir: Path) -> List[Dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"objective.reference: {run_dir} has no metrics.jsonl (give the directory of a finished "
                          "λ = 0 run of the same recipe)")
    out = []
    try:
        with open(path, "rb") as f:  # line by line, each within the readers' JSON bounds (1 MiB, 64 levels)
            while True:
                raw = f.readline(MAX_JSON_BYTES + 1)
                if not raw:
                    break
                if len(raw) > MAX_JSON_BYTES:  # not a line training writes: skip to its end
                    while raw and not raw.endswith(b"\n"):
                        raw = f.readline(MAX_JSON_BYTES + 1)
                    continue
                try:
                    out.append(sample_json(raw))
                except (ValueError, UnicodeDecodeError):
                    continue  # a line cut by a crash
    except OSError as e:
        raise ConfigError(f"objective.reference: cannot read {path}: {e.strerror or e}") from None
    return out


def reference_losses(run_dir: str, teacher_names: Sequence[str], group_names: Sequence[str],
                     per_teacher: bool) -> List[Ref] | Ref:
    """``[T][G]`` (per teacher) or ``[G]`` reference losses; None where the reference run has no value."""
    recs = _records(Path(run_dir))
    if per_teacher:
        last = next((r for r in reversed(recs) if any(k.startswith("ema/") for k in r)), None)
        if last is None:
            raise ConfigError(f"objective.reference: {run_dir}/metrics.jsonl holds no per-group losses (ema/...)")
        out = [[last.get(f"ema/{t}/{g}") for g in group_names] for t in teacher_names]
        if all(v is None for row in out for v in row):
            found = sorted({k.split("/", 1)[1].rsplit("/", 1)[0] for k in last if k.startswith("ema/")})
            raise ConfigError(f"objective.reference: {run_dir} has no losses for teachers {list(teacher_names)} "
                              f"(it has {found})")
        return out
    tail = [r for r in recs if any(k.startswith("group/") for k in r)][-3:]
    if not tail:
        raise ConfigError(f"objective.reference: {run_dir}/metrics.jsonl holds no per-group losses (group/...)")
    ref: Ref = []
    for g in group_names:
        vals = [r[f"group/{g}"] for r in tail if r.get(f"group/{g}") is not None]
        ref.append(sum(vals) / len(vals) if vals else None)
    return ref
