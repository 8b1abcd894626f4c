"""`agglom export`: a folder `timm.create_model("local-dir:<dir>", pretrained=True)` loads with timm alone.

Written to a temporary folder and renamed into place, so a crash never leaves a half-written export; an existing
folder is replaced only when it is an agglom export, and ``agglom.json`` lists the files the export wrote (what a
later ``force=true`` may replace: :mod:`agglom.export.folder`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

import timm

from agglom.export.adapters import write_adapter_pack
from agglom.export.folder import check_target, discard, listing, publish, staging_path
from agglom.export.input_sizes import input_sizes, record_in_config
from agglom.export.model_card import write_model_card
from agglom.runs import latest_checkpoint, load_run_model, run_config

EXPORT_SCHEMA = "agglom.export/1"


def export_run(run_dir: Path, out_dir: Optional[Path] = None, use_ema: bool = True, min_group_count: int = 10,
               force: bool = True, checkpoint: Optional[Path] = None, onnx: Optional[Dict[str, Any]] = None,
               cost: Optional[Dict[str, Any]] = None, data_root: Optional[str] = None) -> Path:
    """Export the run's student to ``out_dir`` (default ``<run>/export``): staged beside it and renamed into place;
    an existing ``out`` is replaced only when it is an agglom export (:mod:`agglom.export.folder`).

    ``onnx``: also ``student.onnx`` (``{"opset", "int8", "runs"}``, :func:`agglom.export.onnx_export.export_onnx`),
    checked on the run's data (``data_root`` when it moved); ``cost``: the figures the card's energy section states
    (``{"tdp_watts", "train_watts", "grid_intensity", "runs"}``, :func:`agglom.export.cost.cost_report`)."""
    from agglom.data.manifest import write_failure

    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "export"
    check_target(out, force)  # before the model is loaded: a refusal costs nothing
    cfg = run_config(run_dir)
    if data_root:
        cfg.data.root, cfg.data.shards = str(data_root), None
    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    model = load_run_model(run_dir, ckpt, use_ema=use_ema)
    tmp = staging_path(out)
    try:
        _write(tmp, run_dir, cfg, ckpt, model, use_ema, min_group_count, onnx, cost)
    except BaseException as e:
        discard(tmp)
        if isinstance(e, OSError):
            raise write_failure(e, out, "nothing was exported") from None
        raise
    return publish(tmp, out)


def _write(tmp: Path, run_dir: Path, cfg: Any, ckpt: Path, model: Any, use_ema: bool, min_group_count: int,
           onnx: Optional[Dict[str, Any]] = None, cost: Optional[Dict[str, Any]] = None) -> None:
    """The export's files into the staging folder ``tmp``; ``agglom.json`` last, listing them all."""
    from agglom.data.jsonfile import read_json
    from agglom.export.cost import cost_report
    from agglom.runs import run_summary

    tmp.mkdir(parents=True)
    student = model.student
    pcfg = {"tag": f"agglom.{cfg.name}", "license": "other", "description": f"agglom student from run {cfg.name}",
            "hf_hub_id": None, "url": None}
    timm.models.save_for_hf(student, str(tmp), model_config={"pretrained_cfg": pcfg},
                            model_args=dict(getattr(student, "agglom_model_args", {})), safe_serialization=True)
    _clean_config(tmp / "config.json")
    report_path = run_dir / "eval" / "report.json"
    report = read_json(report_path, fix="rerun agglom eval on the run, or remove it") if report_path.is_file() else {}
    sizes = input_sizes(student, cfg, report)
    record_in_config(tmp / "config.json", sizes)  # the sizes timm may feed it
    write_adapter_pack(model, cfg, tmp)
    costs = cost_report(model, cfg, run_summary(run_dir), **(cost or {}))
    (tmp / "cost.json").write_text(json.dumps(costs, indent=1))
    onnx_result = None
    if onnx is not None:
        from agglom.export.onnx_export import export_onnx

        onnx_result = export_onnx(model, cfg, sizes, tmp, **onnx)
        (tmp / "onnx.json").write_text(json.dumps(onnx_result, indent=1))
    write_model_card(tmp, run_dir, cfg, model, min_group_count=min_group_count, cost=costs, onnx=onnx_result)
    (tmp / "agglom.json").write_text(json.dumps({"schema": EXPORT_SCHEMA, "run": str(run_dir.resolve()),
                                                 "checkpoint": ckpt.name, "ema": use_ema,
                                                 "files": sorted(listing(tmp) + ["agglom.json"])}, indent=1))


def _clean_config(path: Path) -> None:
    """Drop source-checkpoint fields (hub ids, urls) that would point at weights we did not train."""
    conf = json.loads(path.read_text())
    pc = conf.get("pretrained_cfg", {})
    for key in ("hf_hub_id", "url", "custom_load", "source"):
        if pc.get(key) in (None, "", False) or key in ("hf_hub_id", "url"):
            pc.pop(key, None)
    conf["num_classes"] = 0
    path.write_text(json.dumps(conf, indent=2))


def push_to_hub(export_dir: Path, repo_id: str) -> bool:
    """Upload the export folder; skipped with a message when offline (HF_HUB_OFFLINE) or unreachable."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        print(f"agglom export: HF_HUB_OFFLINE is set; not pushing to {repo_id} (the folder is complete locally)")
        return False
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(export_dir), repo_id=repo_id)
        return True
    except Exception as e:  # network, auth: the export itself is done, say why the push was skipped
        print(f"agglom export: push to {repo_id} skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        return False
