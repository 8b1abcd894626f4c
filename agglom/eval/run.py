"""The evaluation driver behind `agglom eval` and `agglom sweep`: load the model, build the context every section
reads (:class:`agglom.eval.section.EvalContext`: the datasheet looked up once, the grouping, the encoders — the
student and each audited teacher — and the shared pass over train/val/test), let each section check its settings
before any work, run the enabled sections in registry order (:data:`agglom.eval.sections.SECTIONS`: the probe
protocol, fidelity, resolution, dense, zero-shot, SAM, comparison) and write the report. The command module only
parses arguments and calls :func:`run_evaluation`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import torch
from omegaconf import OmegaConf

from agglom.config.choices import input_channels
from agglom.config.eval_args import EvalArgs
from agglom.config.load import ConfigError
from agglom.eval.section import EvalContext
from agglom.eval.sections import SECTIONS


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


def _encoders(ctx: EvalContext) -> Dict[str, Any]:
    """The probe's encoders by model name; fills the context's audited teachers, spatial encoders (``eval.dense``)
    and fidelity accumulator (``eval.fidelity``, the student's test pass measures every teacher it can rebuild)."""
    from agglom.eval.extract import (
        LastOutput,
        student_encoder,
        student_spatial_encoder,
        teacher_encoder,
        teacher_spatial_encoder,
    )
    from agglom.eval.fidelity.fidelity import FidelityAccumulator

    args, cfg, model, primary, device = ctx.args, ctx.cfg, ctx.model, ctx.primary, ctx.device
    c = input_channels(cfg.data.grayscale)
    mean, std = list(cfg.student.mean)[:c], list(cfg.student.std)[:c]
    encoders = {}
    if model is not None:
        encoders[primary] = student_encoder(model, args.eval.features)
        if args.eval.dense:
            ctx.spatial[primary] = student_spatial_encoder(model, args.eval.dense_features)
    ctx.teachers = _teachers(ctx.audit_names, cfg, mean, std, device)
    for name, t in ctx.teachers.items():
        outputs = LastOutput(t)  # the probe's and the dense probe's features from one teacher forward
        encoders[f"teacher:{name}"] = teacher_encoder(t, args.eval.features, outputs)
        if args.eval.dense:
            ctx.spatial[f"teacher:{name}"] = teacher_spatial_encoder(outputs)
    if model is not None and args.eval.fidelity:
        missing = [s.name for s in model.specs if s.name not in ctx.teachers]
        fid_teachers = {**{n: t for n, t in ctx.teachers.items() if n in model.teacher_names},
                        **_teachers(missing, cfg, mean, std, device, required=False)}
        ctx.fidelity = FidelityAccumulator(model, fid_teachers)
    return encoders


def _grouping(cfg: Any, sheet: Any) -> Dict[str, Any]:
    """How samples are grouped: the recipe's group specs (declared bins, intersections) as in training, or plain
    attributes on another dataset without the run's attributes; the unknown group's role; the label names (from the
    datasheet ``sheet``)."""
    from agglom.data.readers import group_indexer

    specs = [s.name for s in cfg.groups.specs if s.name]
    try:
        indexer = group_indexer(cfg)
    except ValueError:
        indexer, specs = None, []
    return {"indexer": indexer, "specs": specs, "exclude_unknown": cfg.groups.unknown != "include",
            "label_names": ((sheet or {}).get("label") or {}).get("names")}


def eval_out_dir(args: Any) -> Path:
    """Where an evaluation writes: ``out=``, else ``<run>/eval``, else ``runs/audit-<teacher>/eval``."""
    if not args.out and args.run and Path(args.run).suffix.lower() == ".onnx":
        from agglom.eval.onnx_encoder import default_out

        return default_out(Path(args.run))  # eval-<stem>/ beside the graph
    return Path(args.out) if args.out else (Path(args.run) / "eval" if args.run else
                                            Path("runs") / f"audit-{args.teacher}" / "eval")


def run_evaluation(args: Any) -> Dict[str, Any]:
    """Evaluate ``args.run`` (and/or ``args.teacher``) and write ``<out>/report.{json,md}``, predictions.csv, each
    section's prediction file and plots; returns the report."""
    from agglom.data.shards import dataset_datasheet
    from agglom.dist import dist_info
    from agglom.engine.base import pick_device
    from agglom.eval.extract import collect_splits
    from agglom.eval.report.schema import new_report
    from agglom.eval.report.write import write_all

    if not args.run and not args.teacher:
        raise ConfigError("eval: give run=<run or export dir> and/or teacher=<card name>")
    device = pick_device(dist_info(), args.device)
    cfg, model, primary = _load_primary(args, device)
    _apply_data_overrides(cfg, args)
    sheet = dataset_datasheet(cfg)
    audit_names = [args.teacher] if args.teacher else []
    if model is not None and args.audit:
        audit_names += [e.name for e in cfg.teachers if e.name not in audit_names]
    ctx = EvalContext(args=args, cfg=cfg, model=model, primary=primary, device=device, out=eval_out_dir(args),
                      datasheet=sheet, label_info=(sheet or {}).get("label") or {}, grouping=_grouping(cfg, sheet),
                      attr_names=list(args.eval.attributes) or None, audit_names=audit_names)
    for section in SECTIONS.values():  # what each section needs, checked before any work
        section.prepare(ctx)
    encoders = _encoders(ctx)
    with torch.no_grad():
        ctx.splits_of = collect_splits(cfg, encoders, device, fidelity=ctx.fidelity, batch_size=args.batch_size,
                                       dense=ctx.spatial or None, dense_grid=int(args.eval.dense_grid))
    parts: Dict[str, Dict[str, Any]] = {}
    for name, section in SECTIONS.items():
        if section.enabled(ctx):
            parts[name] = section.run(ctx)
            foreign = set(parts[name]) - set(section.keys)
            if foreign:  # a programming error: a section writes only the report keys it owns
                raise ValueError(f"eval section {name!r} returned keys it does not own: {sorted(foreign)}")
    probe = parts.pop("classification")
    report = new_report(probe["primary"], probe["models"], meta={"data_root": str(cfg.data.root),
                                                                 "features": args.eval.features, "device": device.type})
    for part in parts.values():
        report.update(part)
    primary_splits = ctx.splits_of.get(primary) or next(iter(ctx.splits_of.values()))
    report["data"] = {role: sf.data for role, sf in primary_splits.items() if sf.data is not None}
    return write_all(ctx.out, report, ctx.csvs, ctx.figures)


__all__ = ["EvalArgs", "run_evaluation"]
