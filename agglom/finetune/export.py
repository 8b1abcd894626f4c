"""Export a fine-tuned encoder (without its linear head) in the teacher zoo's `agglom` format.

The folder is what ``timm.create_model("local-dir:<dir>", pretrained=True)`` loads with timm alone
(``config.json`` + ``model.safetensors`` from ``timm.models.save_for_hf``, pretrained_cfg carrying the mean/std/
input size it was trained with), plus ``card.yaml`` (family ``agglom``: what ``teachers.load_card(<dir>)`` reads
on top of the pretrained_cfg) and ``finetune.json`` (metrics history, final per-group validation AUCs,
worst-group AUC). Written to a temporary folder and renamed into place.
"""
from __future__ import annotations

import json
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


def method_line(enc: Encoder) -> str:
    """How the encoder was trained, for the card's description."""
    n = enc.params
    counts = f" ({n['trainable']:,} of {n['total']:,} encoder parameters trained)" if n else ""
    if enc.lora is None:
        return f"full fine-tuning{counts}"
    lo = enc.lora
    return (f"LoRA rank {lo.rank}, alpha {lo.alpha:g}, dropout {lo.dropout:g} on "
            f"{', '.join(lo.target_modules)} ({lo.adapted} modules){counts}, merged into the weights")


def card_finetune(a: Any, enc: Encoder) -> Dict[str, Any]:
    """The card's ``finetune`` record: method (full|lora) with rank/alpha/target modules, steps, objective, the
    base card — what a report needs to compare the fairness effect of LoRA against full fine-tuning."""
    src = enc.source
    rec: Dict[str, Any] = {"method": "lora" if enc.lora is not None else "full"}
    if enc.lora is not None:
        rec.update(enc.lora.record())
    rec.update({"steps": int(a.optim.steps), "objective": str(a.objective.group), "lam": float(a.objective.lam),
                "groups_by": str(a.groups.by), "trainable_params": enc.params.get("trainable"),
                "total_params": enc.params.get("total"),
                "base_card": src.get("card") or f"timm {src.get('model')}", "base_family": enc.family,
                "base_digest": src.get("digest")})
    return {k: v for k, v in rec.items() if v is not None}


def card_docs(a: Any, enc: Encoder, result: Dict[str, Any]) -> Dict[str, str]:
    """licence, provenance, known_bias and description of an export (objective, λ, steps, per-group metrics)."""
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
            f"{a.data.image_size or enc.image_size} px, seed {a.seed}), {method_line(enc)}. Validation "
            f"({a.data.val_split}): {metrics_line(final)}.")
    if enc.family_path and src.get("family") in ("open_clip", "transformers"):
        desc += " Image encoder only: the base's text tower is not carried (fine-tuning moved the image space)."
    if a.description:
        desc = f"{a.description} {desc}"
    prov = f"fine-tuned on {data_name} at {Path(str(a.data.root)).resolve()} ({data_src})"
    if src.get("provenance"):
        prov += f"; base model trained on: {src['provenance']}"
    bias = (f"per-group validation AUC by {a.groups.by}: "
            + ", ".join(f"{n} {_fmt(g['auc'])}" for n, g in final.get("groups", {}).items())
            + f"; worst group {final.get('worst_group')} (AUC gap {_fmt(final.get('auc_gap'))})")
    return {"licence": licence, "provenance": prov, "known_bias": bias, "description": desc}


def card_fields(a: Any, enc: Encoder, result: Dict[str, Any]) -> Dict[str, Any]:
    """card.yaml content of a timm export: family agglom + documentation + the finetune record."""
    return {
        "name": str(a.name), "family": "agglom",
        "summary": enc.summary_kind, "spatial": "patch",
        "interpolation": enc.interpolation,
        "tiny": bool(getattr(enc.base_card, "tiny", False)),
        **card_docs(a, enc, result), "finetune": card_finetune(a, enc),
    }


def staging_dir(out: Path, force: bool) -> Path:
    """The temporary folder (not yet created) an export is written into before :func:`publish` renames it into place
    (a crash never leaves a half-written teacher at ``out``); refuses an ``out`` that is not agglom's to replace, or
    an existing export without ``force`` (:func:`agglom.export.folder.check_target`)."""
    from agglom.export.folder import check_target, staging_path

    check_target(Path(out), force)
    return staging_path(Path(out))


def publish(tmp: Path, out: Path, card: Dict[str, Any], record: Dict[str, Any]) -> Path:
    """Write card.yaml and finetune.json (listing every file of the export) into the staged folder, then rename it
    to ``out`` (replacing the export there). A failure removes the staged folder; an OSError is one line."""
    from agglom.data.manifest import write_failure
    from agglom.export import folder

    try:
        (tmp / "card.yaml").write_text(f"# teacher card for this export (family {card['family']}): "
                                       "teachers.load_card(<this folder>)\n"
                                       + yaml.safe_dump(card, sort_keys=False, allow_unicode=True, width=110))
        files = sorted(folder.listing(tmp) + ["finetune.json"])
        (tmp / "finetune.json").write_text(json.dumps({**record, "files": files}, indent=1))
    except OSError as e:
        folder.discard(tmp)
        raise write_failure(e, out, "nothing was exported") from None
    except BaseException:
        folder.discard(tmp)
        raise
    return folder.publish(tmp, out)


def export_encoder(a: Any, enc: Encoder, result: Dict[str, Any], out: Path, force: bool = True) -> Path:
    from agglom.data.manifest import write_failure
    from agglom.export.folder import discard

    out = Path(out)
    tmp = staging_dir(out, force)
    model = enc.model.cpu().eval()
    size = int(enc.image_size)
    pcfg = {"mean": list(enc.mean), "std": list(enc.std), "input_size": [3, size, size],
            "interpolation": enc.interpolation, "crop_pct": 1.0, "crop_mode": "center",
            "tag": f"agglom-finetune.{a.name}", "license": "other",
            "description": f"agglom finetune {a.name}: objective {a.objective.group}"}
    try:
        timm.models.save_for_hf(model, str(tmp), model_config={"pretrained_cfg": pcfg}, safe_serialization=True,
                                data_config={"mean": list(enc.mean), "std": list(enc.std),
                                             "input_size": (3, size, size), "interpolation": enc.interpolation,
                                             "crop_pct": 1.0})
        _clean_config(tmp / "config.json", pcfg)
    except BaseException as e:
        discard(tmp)
        if isinstance(e, OSError):
            raise write_failure(e, out, "nothing was exported") from None
        raise
    return publish(tmp, out, card_fields(a, enc, result), finetune_record(a, enc, result))


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
        "method": card_finetune(a, enc),
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


def _export_line(result: Dict[str, Any], out: Any) -> str:
    fam = result.get("family", "timm")
    where = {"open_clip": "open_clip image tower: open_clip_config.json + open_clip_model.safetensors",
             "sam": "SAM image encoder: model.safetensors",
             "transformers": f"transformers: from_pretrained('{out}')"}.get(
        fam, f"timm: timm.create_model('local-dir:{out}', pretrained=True)")
    return f"export: {out}  (teacher: teachers=[{{name: {out}}}]; {where})"


def summary_table(a: Any, result: Dict[str, Any], out: Any) -> str:
    """The table `agglom finetune` prints: per-group validation AUC, worst group, gap, where the export is."""
    final = result["final"]
    obj = a.objective
    lines = [f"agglom finetune {a.name}: objective {obj.group}, λ={obj.lam}, {a.optim.steps} steps in "
             f"{result['seconds']['total']:.1f} s ({result['seconds']['train_steps_per_s']:.1f} steps/s), "
             f"groups by {a.groups.by}; {result.get('method', 'full')}", "",
             f"| {'group':<12} | {'n':>6} | {'pos':>6} | {'AUC':>9} |", f"|{'-' * 14}|{'-' * 8}|{'-' * 8}|{'-' * 11}|",
             f"| {'overall':<12} | {final['n']:>6} | {'':>6} | {_fmt(final['auc']):>9} |"]
    for n, g in final["groups"].items():
        pos = "" if g["positives"] is None else g["positives"]
        lines.append(f"| {n:<12} | {g['n']:>6} | {pos:>6} | {_fmt(g['auc']):>9} |")
    lines += ["", f"worst-group AUC: {_fmt(final['worst_group_auc'])} ({final['worst_group']}); "
                  f"AUC gap (max - min, lower is better): {_fmt(final['auc_gap'])}",
              _export_line(result, out)]
    return "\n".join(lines)


__all__ = ["export_encoder", "card_fields", "card_docs", "card_finetune", "method_line", "finetune_record", "metrics_line", "summary_table"]
