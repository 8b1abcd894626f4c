"""Export a fine-tuned encoder (without its linear head) in the teacher zoo's `agglom` format.

The folder is what ``timm.create_model("local-dir:<dir>", pretrained=True)`` loads with timm alone
(``config.json`` + ``model.safetensors`` from ``timm.models.save_for_hf``, pretrained_cfg carrying the mean/std/
input size it was trained with), plus ``card.yaml`` (family ``agglom``: what ``teachers.load_card(<dir>)`` reads
on top of the pretrained_cfg) and ``finetune.json`` (metrics history, final per-group validation AUCs,
worst-group AUC). Written to a temporary folder and renamed into place.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import timm
import yaml

from agglom.finetune.model import Encoder

FINETUNE_SCHEMA = "agglom.finetune/1"


def _fmt(x: Optional[float]) -> str:
    return "undefined" if x is None else f"{x:.3f}"


def metrics_line(final: Dict[str, Any]) -> str:
    groups = ", ".join(f"{n} {_fmt(g['auc'])} (n={g['n']})" for n, g in final.get("groups", {}).items())
    return (f"val AUC {_fmt(final.get('auc'))}; per group: {groups}; worst-group AUC "
            f"{_fmt(final.get('worst_group_auc'))} ({final.get('worst_group')})")


def card_fields(a: Any, enc: Encoder, result: Dict[str, Any]) -> Dict[str, Any]:
    """card.yaml content: family agglom + documentation (objective, λ, steps, per-group metrics)."""
    sheet = result.get("datasheet") or {}
    obj = a.objective
    src = enc.source
    base = (f"{src['kind']} {src.get('card')} ({src.get('family')}: {src.get('model')})" if src["kind"] != "model"
            else f"timm {src['model']} {src.get('model_args') or {}} "
                 f"({'pretrained' if src.get('pretrained') else 'random init'})")
    data_src = sheet.get("source") or "no datasheet source"
    data_name = sheet.get("name") or Path(str(a.data.root)).name
    base_lic = src.get("licence")
    licence = a.licence or (f"derived: base weights {base_lic}; fine-tuned on data licensed "
                            f"{sheet.get('licence', 'unknown')}" if base_lic else
                            f"weights trained by agglom finetune on data licensed {sheet.get('licence', 'unknown')}")
    lam = f", λ={obj.lam}"
    dro = f", η={obj.groupdro_eta}, C={obj.groupdro_size_adjust}" if obj.group == "groupdro" else ""
    final = result["final"]
    desc = (f"Encoder fine-tuned by `agglom finetune` from {base}: supervised {result['task'].kind} "
            f"classification with a linear head (dropped on export), objective {obj.group}{lam}{dro} over groups "
            f"'{a.groups.by}', {a.optim.steps} steps (lr {a.optim.lr}, batch {a.data.batch_size}, "
            f"{a.data.image_size or enc.image_size} px, seed {a.seed}). Validation ({a.data.val_split}): "
            f"{metrics_line(final)}.")
    if a.description:
        desc = f"{a.description} {desc}"
    prov = f"fine-tuned on {data_name} at {Path(str(a.data.root)).resolve()} ({data_src})"
    if src.get("provenance"):
        prov += f"; base model trained on: {src['provenance']}"
    bias = (f"per-group validation AUC by {a.groups.by}: "
            + ", ".join(f"{n} {_fmt(g['auc'])}" for n, g in final.get("groups", {}).items())
            + f"; worst group {final.get('worst_group')} (AUC gap {_fmt(final.get('auc_gap'))})")
    return {
        "name": str(a.name), "family": "agglom",
        "summary": enc.summary_kind, "spatial": "patch",
        "interpolation": enc.interpolation,
        "tiny": bool(getattr(enc.base_card, "tiny", False)),
        "licence": licence, "provenance": prov, "known_bias": bias, "description": desc,
    }


def export_encoder(a: Any, enc: Encoder, result: Dict[str, Any], out: Path, force: bool = True) -> Path:
    out = Path(out)
    if out.exists() and not force:
        from agglom.config.load import ConfigError

        raise ConfigError(f"out: {out} exists; pass force=true to replace it")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    model = enc.model.cpu().eval()
    size = int(enc.image_size)
    pcfg = {"mean": list(enc.mean), "std": list(enc.std), "input_size": [3, size, size],
            "interpolation": enc.interpolation, "crop_pct": 1.0, "crop_mode": "center",
            "tag": f"agglom-finetune.{a.name}", "license": "other",
            "description": f"agglom finetune {a.name}: objective {a.objective.group}"}
    timm.models.save_for_hf(model, str(tmp), model_config={"pretrained_cfg": pcfg}, safe_serialization=True,
                            data_config={"mean": list(enc.mean), "std": list(enc.std), "input_size": (3, size, size),
                                         "interpolation": enc.interpolation, "crop_pct": 1.0})
    _clean_config(tmp / "config.json", pcfg)
    card = card_fields(a, enc, result)
    (tmp / "card.yaml").write_text("# teacher card for this export (family agglom): teachers.load_card(<this folder>)\n"
                                   + yaml.safe_dump(card, sort_keys=False, allow_unicode=True, width=110))
    (tmp / "finetune.json").write_text(json.dumps(finetune_record(a, enc, result), indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _clean_config(path: Path, pcfg: Dict[str, Any]) -> None:
    """Keep the preprocessing we trained with; drop hub ids/urls of weights we did not train."""
    conf = json.loads(path.read_text())
    pc = conf.setdefault("pretrained_cfg", {})
    for key in ("hf_hub_id", "url", "file", "source"):
        pc.pop(key, None)
    for key in ("mean", "std", "input_size", "interpolation", "crop_pct"):
        pc[key] = pcfg[key]
    conf["num_classes"] = 0
    path.write_text(json.dumps(conf, indent=2))


def finetune_record(a: Any, enc: Encoder, result: Dict[str, Any]) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    final = result["final"]
    return {
        "schema": FINETUNE_SCHEMA,
        "name": str(a.name),
        "args": OmegaConf.to_container(a, resolve=True),
        "base": enc.source,
        "task": {"kind": result["task"].kind, "outputs": result["task"].outputs},
        "objective": {"group": a.objective.group, "lam": float(a.objective.lam),
                      "groupdro_eta": float(a.objective.groupdro_eta),
                      "groupdro_size_adjust": float(a.objective.groupdro_size_adjust)},
        "groups": {"by": a.groups.by, "names": result["group_names"], "unknown": a.groups.unknown},
        "preprocessing": {"image_size": int(enc.image_size), "mean": list(enc.mean), "std": list(enc.std),
                          "interpolation": enc.interpolation},
        "summary": enc.summary_kind,
        "steps": int(a.optim.steps),
        "samples_seen": result["samples_seen"],
        "seconds": result["seconds"],
        "final": final,
        "worst_group_auc": final.get("worst_group_auc"),
        "worst_group": final.get("worst_group"),
        "history": result["history"],
        "validation": result["val_history"],
        "groupdro_q": _q(result),
    }


def _q(result: Dict[str, Any]) -> Optional[Dict[str, float]]:
    obj = result["objective"]
    q = getattr(obj, "q", None)
    if q is None:
        return None
    names: List[str] = result["group_names"]
    return {n: float(q[i]) for i, n in enumerate(names) if bool(obj.parity_groups[i])}


def summary_table(a: Any, result: Dict[str, Any], out: Any) -> str:
    """The table `agglom finetune` prints: per-group validation AUC, worst group, gap, where the export is."""
    final = result["final"]
    obj = a.objective
    lines = [f"agglom finetune {a.name}: objective {obj.group}, λ={obj.lam}, {a.optim.steps} steps in "
             f"{result['seconds']['total']:.1f} s ({result['seconds']['train_steps_per_s']:.1f} steps/s), "
             f"groups by {a.groups.by}", "",
             f"| {'group':<12} | {'n':>6} | {'pos':>6} | {'AUC':>9} |", f"|{'-' * 14}|{'-' * 8}|{'-' * 8}|{'-' * 11}|",
             f"| {'overall':<12} | {final['n']:>6} | {'':>6} | {_fmt(final['auc']):>9} |"]
    for n, g in final["groups"].items():
        pos = "" if g["positives"] is None else g["positives"]
        lines.append(f"| {n:<12} | {g['n']:>6} | {pos:>6} | {_fmt(g['auc']):>9} |")
    lines += ["", f"worst-group AUC: {_fmt(final['worst_group_auc'])} ({final['worst_group']}); "
                  f"AUC gap (max - min, lower is better): {_fmt(final['auc_gap'])}",
              f"export: {out}  (teacher: teachers=[{{name: {out}}}]; timm: "
              f"timm.create_model('local-dir:{out}', pretrained=True))"]
    return "\n".join(lines)


__all__ = ["export_encoder", "card_fields", "finetune_record", "metrics_line", "summary_table"]
