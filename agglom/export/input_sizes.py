"""The input sizes an exported student supports, as the export records them (config.json and the model card).

A timm ViT built with ``dynamic_img_size: true`` takes any input whose sides are multiples of its patch size (the
position embedding is resampled to the grid); one built without it takes its training size only. What the export
states: whether the size is dynamic, the patch size, the size(s) it was trained at (``data.image_size``, or the
sizes ``data.resolutions`` sampled from), and — when the run's evaluation measured it (``eval.resolutions``,
:mod:`agglom.eval.resolution.resolution`) — the range of sizes at which every teacher's fidelity stayed within tolerance of
its best and no mode switch was flagged (the *validated* range). Sizes outside that range load and run, but
nothing says how the features behave there.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

#: the top-level key of config.json that holds :func:`input_sizes` (timm ignores keys it does not know)
CONFIG_KEY = "agglom_input_sizes"


def _patch(student: Any) -> int:
    p = getattr(getattr(student, "patch_embed", None), "patch_size", 16)
    return int(p[0] if isinstance(p, (tuple, list)) else p)


def trained_sizes(cfg: Any) -> List[int]:
    """The student's training input sizes: ``data.resolutions`` when set (multi-resolution), else ``data.image_size``."""
    sizes = [int(s) for s in (cfg.data.get("resolutions") or [])]
    return sorted(set(sizes)) if sizes else [int(cfg.data.image_size)]


def input_sizes(student: Any, cfg: Any, report: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """``{dynamic_img_size, patch_size, trained_sizes, evaluated_sizes, validated_range, mode_switches}`` for a
    run's student; the last three come from the run's ``eval/report.json`` ``resolution`` section (None without)."""
    res = (report or {}).get("resolution") or {}
    return {
        "dynamic_img_size": bool(getattr(student, "dynamic_img_size", False)),
        "patch_size": _patch(student),
        "trained_sizes": trained_sizes(cfg),
        "evaluated_sizes": list(res.get("sizes") or []) or None,
        "validated_range": res.get("validated_range"),
        "mode_switches": len(res.get("switches") or []) if res else None,
        "rule": res.get("rule"),
    }


def record_in_config(path: Path, info: Mapping[str, Any]) -> None:
    """Write ``info`` into an export's config.json (top-level :data:`CONFIG_KEY`; ``pretrained_cfg.fixed_input_size``
    says whether timm may feed other sizes)."""
    conf = json.loads(Path(path).read_text())
    conf[CONFIG_KEY] = dict(info)
    conf.setdefault("pretrained_cfg", {})["fixed_input_size"] = not info["dynamic_img_size"]
    Path(path).write_text(json.dumps(conf, indent=2))


def card_rows(info: Mapping[str, Any]) -> List[str]:
    """The model card's "Input sizes" section."""
    trained = ", ".join(f"{s} px" for s in info["trained_sizes"])
    if not info["dynamic_img_size"]:
        return [f"Fixed input size: {trained} (built without `dynamic_img_size`; other sizes are refused by timm)."]
    p = info["patch_size"]
    rows = [f"Dynamic input size (`dynamic_img_size: true`): any side that is a multiple of {p} px is accepted "
            f"(the position embedding is resampled to the grid; features come as (side / {p})² patch tokens). "
            f"Trained at {trained}" + (" (one size sampled per step)." if len(info["trained_sizes"]) > 1 else ".")]
    rng = info.get("validated_range")
    if info.get("evaluated_sizes") is None:
        rows.append("Validated range: not measured (run `agglom eval run=... eval.resolutions=[0.5,1,2]` before "
                    "exporting to measure fidelity and the probe against the input size).")
    elif rng:
        rows.append(f"Validated range: {rng[0]}–{rng[1]} px (evaluated at {', '.join(map(str, info['evaluated_sizes']))}"
                    f" px; {info['rule']}); mode switches flagged: {info['mode_switches']}.")
    else:
        rows.append(f"Validated range: none — at the training size itself some teacher's fidelity was not within "
                    f"tolerance ({info['rule']}); evaluated at {', '.join(map(str, info['evaluated_sizes']))} px.")
    return rows


__all__ = ["CONFIG_KEY", "trained_sizes", "input_sizes", "record_in_config", "card_rows"]
