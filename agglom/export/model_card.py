"""The model card (`README.md` of an export): what the student learnt from, on what data, how fair it is,
what it cost, and what it is (not) for. Groups smaller than `min_group_count` are suppressed."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from agglom.data.jsonfile import read_json_object
from agglom.export.cost import card_rows as cost_rows
from agglom.export.input_sizes import card_rows, input_sizes
from agglom.export.onnx_export import card_rows as onnx_rows
from agglom.runs import run_summary


def _teacher_rows(model: Any) -> List[str]:
    rows = ["| teacher | family | model | licence | training data (provenance) | card digest |", "|---|---|---|---|---|---|"]
    for spec in model.specs:
        fam = mdl = lic = prov = "unknown"
        try:
            import teachers as zoo

            card = zoo.load_card(spec.name)
            fam, mdl = card.family, card.model
            lic = getattr(card, "licence", None) or "unknown"
            prov = (getattr(card, "provenance", None) or "unknown").replace("\n", " ")
        except Exception:  # the card may be a local folder that is gone; the roster still names the teacher
            pass
        rows.append(f"| {spec.name} | {fam} | {mdl} | {lic} | {prov[:160]} | `{spec.digest[:12]}` |")
    return rows


def suppress(count: int, minimum: int) -> str:
    return str(count) if count >= minimum else f"<{minimum} (suppressed)"


def _data_rows(datasheet: Dict[str, Any], minimum: int, split: str) -> List[str]:
    """Per-attribute counts in the training split (small groups suppressed), numeric summaries, missingness."""
    if not datasheet:
        return ["No datasheet (dataset.json) was found for the training data."]
    rows = [f"Dataset `{datasheet.get('name', '?')}` — source: {datasheet.get('source', 'unknown')}; licence: "
            f"{datasheet.get('licence', 'unknown')}; samples per split: "
            + ", ".join(f"{k}: {v.get('samples', v) if isinstance(v, dict) else v}" for k, v in
                        (datasheet.get("splits") or {}).items()), "",
            f"Group counts in the `{split}` split (groups under {minimum} samples suppressed):", ""]
    for name, info in (datasheet.get("attributes") or {}).items():
        if not isinstance(info, dict):
            continue
        missing = info.get("missing", {})
        n_missing = sum(missing.values()) if isinstance(missing, dict) else int(missing or 0)
        if info.get("type") == "numeric":
            sm = (info.get("summary") or {}).get(split) or (info.get("summary") or {}).get("all") or {}
            text = f"numeric, n={sm.get('n', '?')}, range {sm.get('min', '?')}–{sm.get('max', '?')}, " \
                   f"median {sm.get('median', '?')}"
        else:
            counts = (info.get("counts") or {}).get(split) or {}
            text = ", ".join(f"{v}: {suppress(int(c), minimum)}" for v, c in counts.items()) or "no counts"
        rows.append(f"- **{name}**: {text}" + (f" (missing for {n_missing} samples)" if n_missing else ""))
    return rows


def _eval_rows(report: Dict[str, Any], minimum: int) -> List[str]:
    """Headline per model x attribute; group AUCs of groups smaller than `minimum` are not shown."""
    from agglom.eval.metrics import headline

    def f(v):
        return "undefined" if v is None else f"{v:.3f}"

    rows: List[str] = []
    for model_name, res in (report.get("models") or {}).items():
        for attr, m in (res.get("attributes") or {}).items():
            h = headline(m)
            groups = ", ".join(f"{g}: {f((gm.get('auc') or {}).get('value'))}" if gm.get("n", 0) >= minimum
                               else f"{g}: suppressed (n<{minimum})" for g, gm in (m.get("groups") or {}).items())
            rows.append(f"| {model_name} | {attr} | {f(h.get('auc'))} | {f(h.get('worst_group_auc'))} | "
                        f"{f(h.get('auc_gap'))} | {f(h.get('eod_worst_case'))} | {groups} |")
    if rows:
        rows = ["Linear probe on frozen features (threshold chosen on validation; gaps: lower is better; EOD: "
                "fairlearn worst case).", "",
                "| model | attribute | AUC | worst-group AUC | AUC gap | EOD | group AUCs |",
                "|---|---|---|---|---|---|---|"] + rows
    return rows


def _fairness_rows(cfg: Any, run_dir: Path) -> List[str]:
    """The data- and teacher-side fairness settings the run used."""
    rows = []
    beta = 1.0 if cfg.data.group_balanced else float(cfg.data.get("group_balance", 0.0) or 0.0)
    if beta or cfg.data.group_weights:
        rows.append(f"- sampling: group shares ∝ n_g^(1−{beta:g})" +
                    (f", weights {dict(cfg.data.group_weights)}" if cfg.data.group_weights else ""))
    routing = Path(run_dir) / "routing.json"
    if routing.is_file():
        r = read_json_object(routing, fix="it is the run's teacher x group routing; rerun the audit or remove it",
                             max_bytes=16 << 20)
        boosted = [f"{t} on {g} × {w:.2f}" for t, ws in zip(r["teachers"], r["weights"])
                   for g, w in zip(r["groups"], ws) if w != 1.0]
        rows.append(f"- teacher × group routing from a validation audit (strength {r.get('strength')}): "
                    + (", ".join(boosted) if boosted else "no teacher stood out"))
    if cfg.objective.routing:
        rows.append(f"- explicit routing: {dict(cfg.objective.routing)}")
    if cfg.objective.get("reference"):
        rows.append(f"- reference losses from `{cfg.objective.reference}`")
    return rows


def _comparison_rows(report: Mapping[str, Any]) -> List[str]:
    c = report.get("comparison")
    if not c:
        return []
    rows = ["", f"Against the reference `{c.get('reference')}` on the same test samples (paired bootstrap, 95%):", ""]
    for attr, r in c.get("attributes", {}).items():
        if "labels" in r:
            continue
        d = r["worst_group_auc"]
        ci = f" [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" if d.get("ci") else ""
        rows.append(f"- {attr}: worst-group AUC {d['delta']:+.3f}{ci}; groups worse beyond their interval: "
                    f"{', '.join(r['levelled_down']) or 'none'}")
    return rows


def _read_rows(summary: Dict[str, Any], report: Dict[str, Any]) -> List[str]:
    """What training and evaluation left out of the data (run.json, eval/report.json), so the card says it."""
    skipped, noted = summary.get("skipped") or {}, summary.get("noted") or {}
    rows = ["Samples left out while training (distinct samples or shards): "
            + (", ".join(f"{k} {v}" for k, v in skipped.items()) or "none")
            + ("; used but changed: " + ", ".join(f"{k} {v}" for k, v in noted.items()) if noted else "") + "."]
    for split, info in (report.get("data") or {}).items():
        sk = info.get("skipped") or {}
        exp = info.get("expected")
        rows.append(f"Evaluation `{split}` split: {info.get('samples')} samples read"
                    + (f" of {exp} listed" if exp is not None else "")
                    + (f"; skipped {', '.join(f'{k} {v}' for k, v in sk.items())}" if sk else "") + ".")
    return ["", *[f"- {r}" for r in rows]]


def _section(title: str, data: Optional[Mapping[str, Any]], rows: Any) -> List[str]:
    """A card section drawn by ``rows(data)`` (nothing when there is no ``data``)."""
    return [f"## {title}", "", *rows(data), ""] if data else []


def _inputs(run_dir: Path, cfg: Any) -> tuple:
    """(datasheet, eval report) of the run, each {} when absent; a broken file is one line naming it."""
    from agglom.data.jsonfile import read_json
    from agglom.data.writer import read_datasheet

    report_path = Path(run_dir) / "eval" / "report.json"
    report = read_json(report_path, fix="rerun agglom eval on the run, or remove it") if report_path.is_file() else {}
    return read_datasheet(cfg.data.root) or {}, report


def write_model_card(out: Path, run_dir: Path, cfg: Any, model: Any, min_group_count: int = 10,
                     cost: Optional[Mapping[str, Any]] = None, onnx: Optional[Mapping[str, Any]] = None) -> Path:
    """The export's ``README.md``; ``cost`` and ``onnx`` (their reports, agglom/export/cost.py, onnx_export.py) add sections."""
    summary = run_summary(run_dir)
    datasheet, report = _inputs(run_dir, cfg)
    hours = (summary.get("train_seconds") or 0) / 3600 * max(1, int(summary.get("world_size") or 1))
    flops = summary.get("train_flops")
    student = model.student
    pc = student.pretrained_cfg
    lines = [
        "---", "library_name: timm", "tags: [agglom, knowledge-distillation, fairness, medical-imaging]",
        "license: other", "---", "",
        f"# agglom student: {cfg.name}", "",
        f"A `{pc.get('architecture', cfg.student.model)}` encoder distilled by [agglom] from "
        f"{len(model.specs)} frozen teachers with a group-aware objective. It loads with timm alone:", "",
        "```python", "import timm",
        "model = timm.create_model('local-dir:PATH/TO/THIS/FOLDER', pretrained=True)",
        "features = model.forward_features(x)  # x normalised with the mean/std below", "```", "",
        f"Preprocessing: input {tuple(pc.get('input_size', ()))}, mean {tuple(pc.get('mean', ()))}, "
        f"std {tuple(pc.get('std', ()))}. Per-teacher heads are in `adapters.safetensors` "
        "(`agglom.export.load_adapter_pack`).", "",
        "## Input sizes", "", *card_rows(input_sizes(student, cfg, report)), "",
        "## Teachers", "", *_teacher_rows(model), "",
        "Teacher licences bind what you may do with this student: check each before use.", "",
        "## Training data", "", *_data_rows(datasheet, min_group_count, cfg.data.train_split),
        *_read_rows(summary, report), "",
        "## Objective", "",
        f"- group objective: `{cfg.objective.group}`, "
        + (f"η = {cfg.objective.groupdro_eta}" if cfg.objective.group == "groupdro" else f"λ = {cfg.objective.lam}")
        + f", groups by `{cfg.groups.by}` "
        f"(unknown group {cfg.groups.unknown}d from parity terms)",
        f"- losses: summary {cfg.objective.summary_cos}·cos + {1 - cfg.objective.summary_cos:.2f}·smooth-L1 × "
        f"{cfg.objective.summary_weight}; spatial {cfg.objective.spatial_cos}·cos + "
        f"{1 - cfg.objective.spatial_cos:.2f}·smooth-L1 × {cfg.objective.spatial_weight}, granularity "
        f"`{cfg.objective.granularity}`; teacher balance `{cfg.objective.teacher_balance}`; normaliser "
        f"`{cfg.heads.normaliser}`",
        *_fairness_rows(cfg, run_dir), "",
        "## Per-group evaluation", "",
    ]
    ev = _eval_rows(report, min_group_count)
    lines += ev if ev else ["No evaluation report was found for this run (`agglom eval run=...` writes one)."]
    lines += _comparison_rows(report)
    lines += [
        "", "## Compute", "",
        f"- steps: {summary.get('step', 'n/a')}, samples seen: {summary.get('samples', 'n/a')}",
        f"- device: {summary.get('device', 'n/a')} × {summary.get('world_size', 1)}, device-hours: {hours:.4f}",
        f"- estimated training FLOPs: {flops:.3e}" if flops else "- estimated training FLOPs: n/a", "",
        *_section("Compute and energy", cost, cost_rows),
        *_section("ONNX", onnx, onnx_rows),
        "## Intended use and limitations", "",
        "- A research encoder for medical image analysis: frozen features for probes, fine-tuning, retrieval.",
        "- Not a medical device; not validated for clinical decisions. Evaluate per group on your own population "
        "before any deployment, and monitor after it.",
        "- Fairness results hold for the groups and data above only; proxy-group parity is not demographic parity.",
        f"- Groups with fewer than {min_group_count} samples are suppressed in this card.",
        "- It inherits the biases and licence terms of its teachers and its training data.", "",
    ]
    path = Path(out) / "README.md"
    path.write_text("\n".join(lines))
    return path
