"""The evaluation driver behind `agglom eval` and `agglom sweep`: build the encoders (the student, and each teacher
for the audit), run the probe protocol on each, measure fidelity, classify zero-shot through CLIP-family text
towers (``zero_shot=``, :mod:`agglom.eval.zero_shot_run`), compare with a reference model, write the report. The
command module only parses arguments and calls :func:`run_evaluation`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import OmegaConf

from agglom.config.choices import input_channels
from agglom.config.eval_args import EvalArgs
from agglom.config.load import ConfigError
from agglom.eval.sam_run import plan_sam, run_sam


def _load_primary(args: Any, device: torch.device) -> tuple:
    """(cfg, model, primary name) for run=, or (default recipe, None, teacher:<name>) for a teacher alone."""
    from agglom.config.schema import Recipe
    from agglom.eval.extract import resolve_model_dir

    if not args.run:
        return OmegaConf.structured(Recipe), None, f"teacher:{args.teacher}"
    kind = resolve_model_dir(Path(args.run))
    if kind == "onnx":  # an exported ONNX graph, evaluated through onnxruntime (agglom.eval.onnx_encoder)
        from agglom.eval.onnx_encoder import load_onnx_primary

        return load_onnx_primary(args)
    if kind == "run":
        from agglom.runs import load_run_model, run_config

        cfg = run_config(Path(args.run))
        return cfg, load_run_model(Path(args.run)).to(device), cfg.name
    from agglom.export import load_adapter_pack

    model = load_adapter_pack(Path(args.run)).model.to(device)
    meta = json.loads((Path(args.run) / "adapters.json").read_text())["recipe"]
    cfg = OmegaConf.merge(OmegaConf.structured(Recipe), {"student": meta["student"], "data": meta["data"]})
    return cfg, model, Path(args.run).name


def _teachers(names: List[str], cfg: Any, mean: List[float], std: List[float], device: torch.device,
              required: bool = True) -> Dict[str, Any]:
    """Teachers by card name: from the run's feature cache where its recipe names one that is valid for these
    data and covers every split (checked against card digest, preprocessing and shards), else built online."""
    import teachers as zoo
    from agglom.cache import open_cache

    caches = {e.name: e.cache for e in cfg.teachers if e.get("cache")}
    splits = [cfg.data.train_split, cfg.data.val_split, cfg.data.test_split]
    out = {}
    for name in names:
        try:
            card = zoo.load_card(name)
            if name in caches:
                try:
                    cached = open_cache(caches[name], name, cfg, card.digest(), split=splits)
                    cached.name = name
                    out[name] = cached
                    continue
                except ConfigError as e:
                    print(f"agglom eval: teacher {name} runs online ({e})", flush=True)
            out[name] = zoo.build_teacher(card, input_mean=mean, input_std=std, device=str(device))
        except Exception as e:  # noqa: BLE001 - a teacher that cannot be rebuilt here (weights elsewhere)
            if required:
                raise
            print(f"agglom eval: fidelity skips teacher {name} ({e})", flush=True)
    return out


def _apply_data_overrides(cfg: Any, args: Any) -> None:
    """Evaluate on another dataset / size / worker count than the run trained with, when asked."""
    if args.data_root:
        cfg.data.root = args.data_root
        cfg.data.shards = None
    if args.image_size:
        cfg.data.image_size = args.image_size
    cfg.data.num_workers = args.num_workers
    cfg.data.sidecars = list(cfg.data.sidecars) + list(args.sidecars)


def _encoders(args: Any, cfg: Any, model: Any, primary: str, device: torch.device) -> tuple:
    """(encoders by model name, spatial encoders for the dense probe (``eval.dense``), audited teacher modules,
    zero-shot plan or None, fidelity accumulator or None)."""
    from agglom.data.shards import dataset_datasheet
    from agglom.eval.extract import (
        LastOutput,
        student_encoder,
        student_spatial_encoder,
        teacher_encoder,
        teacher_spatial_encoder,
    )
    from agglom.eval.fidelity import FidelityAccumulator

    c = input_channels(cfg.data.grayscale)
    mean, std = list(cfg.student.mean)[:c], list(cfg.student.std)[:c]
    encoders = {}
    dense: Dict[str, Any] = {}  # model -> spatial encoder (eval.dense)
    if model is not None:
        encoders[primary] = student_encoder(model, args.eval.features)
        if args.eval.dense:
            dense[primary] = student_spatial_encoder(model, args.eval.dense_features)
    audit_names = [args.teacher] if args.teacher else []
    if model is not None and args.audit:
        audit_names += [e.name for e in cfg.teachers if e.name not in audit_names]
    zs_plan = None
    if args.zero_shot:  # checked before any work: prompts, and which teachers have a usable text tower
        from agglom.eval.zero_shot_run import plan_zero_shot

        zs_plan = plan_zero_shot(args, cfg, model, audit_names, (dataset_datasheet(cfg) or {}).get("label") or {})
    teacher_mods = _teachers(audit_names, cfg, mean, std, device)
    for name, t in teacher_mods.items():
        outputs = LastOutput(t)  # the probe's and the dense probe's features from one teacher forward
        encoders[f"teacher:{name}"] = teacher_encoder(t, args.eval.features, outputs)
        if args.eval.dense:
            dense[f"teacher:{name}"] = teacher_spatial_encoder(outputs)
    fid = None
    if model is not None and args.eval.fidelity:
        missing = [s.name for s in model.specs if s.name not in teacher_mods]
        fid_teachers = {**{n: t for n, t in teacher_mods.items() if n in model.teacher_names},
                        **_teachers(missing, cfg, mean, std, device, required=False)}
        fid = FidelityAccumulator(model, fid_teachers)
    return encoders, dense, teacher_mods, zs_plan, fid


def _grouping(cfg: Any) -> Dict[str, Any]:
    """How samples are grouped: the recipe's group specs (declared bins, intersections) as in training, or plain
    attributes on another dataset without the run's attributes; the unknown group's role; the label names."""
    from agglom.data.readers import group_indexer
    from agglom.data.shards import dataset_datasheet

    specs = [s.name for s in cfg.groups.specs if s.name]
    try:
        indexer = group_indexer(cfg)
    except ValueError:
        indexer, specs = None, []
    return {"indexer": indexer, "specs": specs, "exclude_unknown": cfg.groups.unknown != "include",
            "label_names": ((dataset_datasheet(cfg) or {}).get("label") or {}).get("names")}


def _run_dense(splits_of: Dict[str, Any], primary: str, model: Any, args: Any, cfg: Any, g: Dict[str, Any],
               attr_names: Optional[List[str]], extra: Dict[str, Any]) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Put the dense section into ``extra``; return the rows of dense_predictions.csv and the overlay masks."""
    from agglom.eval.dense_run import dense_report

    kinds = {n: ("student" if n == primary and model is not None else "teacher") for n in splits_of}
    extra["dense"], rows, overlays = dense_report(splits_of, kinds, args.eval, attr_names, args.seed, g["indexer"],
                                                  g["specs"], g["exclude_unknown"], overlay_attribute=cfg.groups.by)
    return rows, overlays


def _check_upfront(args: Any, cfg: Any, model: Any, device: torch.device) -> Any:
    """What the optional sections need, checked before any work: masks in every split (``eval.dense``), a
    dynamic-size student (``eval.resolutions``); returns the SAM plan (teachers + decoders) or None."""
    if args.eval.dense:
        from agglom.eval.dense_run import check_dense_data

        check_dense_data(cfg)
    if args.eval.resolutions:
        from agglom.eval.resolution_run import check_resolution_eval

        check_resolution_eval(model, list(args.eval.resolutions))
    return plan_sam(args, cfg, model, device) if args.eval.sam_prompts else None


def eval_out_dir(args: Any) -> Path:
    """Where an evaluation writes: ``out=``, else ``<run>/eval``, else ``runs/audit-<teacher>/eval``."""
    if not args.out and args.run and Path(args.run).suffix.lower() == ".onnx":
        from agglom.eval.onnx_encoder import default_out

        return default_out(Path(args.run))  # eval-<stem>/ beside the graph
    return Path(args.out) if args.out else (Path(args.run) / "eval" if args.run else
                                            Path("runs") / f"audit-{args.teacher}" / "eval")


def run_evaluation(args: Any) -> Dict[str, Any]:
    """Evaluate ``args.run`` (and/or ``args.teacher``) and write ``<out>/report.{json,md}``, predictions.csv and
    plots; returns the report."""
    from agglom.dist import dist_info
    from agglom.engine.base import pick_device
    from agglom.eval.protocol import collect_splits, fidelity_report, probe_model, reference_comparison, write_all

    if not args.run and not args.teacher:
        raise ConfigError("eval: give run=<run or export dir> and/or teacher=<card name>")
    device = pick_device(dist_info(), args.device)
    cfg, model, primary = _load_primary(args, device)
    _apply_data_overrides(cfg, args)
    sam = _check_upfront(args, cfg, model, device)
    encoders, dense, teacher_mods, zs_plan, fid = _encoders(args, cfg, model, primary, device)
    g = _grouping(cfg)
    attr_names = list(args.eval.attributes) or None
    results = {}
    with torch.no_grad():
        splits_of = collect_splits(cfg, encoders, device, fidelity=fid, batch_size=args.batch_size, dense=dense or None,
                                   dense_grid=int(args.eval.dense_grid))
        for name, splits in splits_of.items():
            results[name] = probe_model(name, "student" if name == primary and model is not None else "teacher",
                                        splits, args.eval, attr_names, seed=args.seed, indexer=g["indexer"],
                                        specs=g["specs"], exclude_unknown=g["exclude_unknown"],
                                        label_names=g["label_names"])
        extra: Dict[str, Any] = {}
        if fid is not None and fid.sq_err:
            extra = fidelity_report(cfg, fid, splits_of, args, device, attr_names, g["indexer"], g["specs"],
                                    g["exclude_unknown"])
    if args.eval.resolutions:  # the mode-switch test: the student at other input sizes (agglom.eval.resolution_run)
        from agglom.eval.resolution_run import resolution_report

        extra["resolution"] = resolution_report(args, cfg, model, fid.teachers if fid is not None else {}, device, g,
                                                attr_names)
    dense_rows, overlays = _run_dense(splits_of, primary, model, args, cfg, g, attr_names, extra) if dense else ([], {})
    zs_rows: List[Dict[str, Any]] = []
    if zs_plan is not None:
        from agglom.eval.zero_shot_run import run_zero_shot

        with torch.no_grad():
            extra["zero_shot"], zs_rows = run_zero_shot(args, cfg, zs_plan, model, primary, teacher_mods, splits_of,
                                                        device, attr_names, g["indexer"], g["specs"],
                                                        g["exclude_unknown"], g["label_names"])
    sam_rows = run_sam(sam, extra, args, cfg, model, primary, device, g, attr_names, splits_of) if sam else []
    if args.reference and model is not None:
        extra["comparison"] = reference_comparison(Path(args.reference), primary, results[primary], args.eval.bootstrap,
                                                   args.seed, g["exclude_unknown"])
    primary_splits = splits_of.get(primary) or next(iter(splits_of.values()))
    extra["data"] = {role: sf.data for role, sf in primary_splits.items() if sf.data is not None}
    out = eval_out_dir(args)
    report = write_all(out, primary, results, extra, meta={"data_root": str(cfg.data.root),
                                                           "features": args.eval.features, "device": device.type},
                       extra_csvs={"zero_shot_predictions.csv": zs_rows, "dense_predictions.csv": dense_rows,
                                   "sam_predictions.csv": sam_rows})
    if any(overlays.values()):
        from agglom.eval.plots import plot_dense_overlays

        plot_dense_overlays(overlays, out / "dense_overlays.png")
    return report


__all__ = ["EvalArgs", "run_evaluation"]
