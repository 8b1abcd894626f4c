"""`agglom eval run=<run or export dir> [audit=true]` and `agglom eval teacher=NAME data_root=DIR`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from agglom.commands import Command
from agglom.config.schema import EvalConfig


@dataclass
class EvalArgs:
    run: Optional[str] = None  # a run dir or an export folder
    teacher: Optional[str] = None  # a teacher card name: the audit baseline on its own
    audit: bool = False  # with run=: also evaluate each of the run's teachers with the same protocol
    data_root: Optional[str] = None  # another dataset (default: the run's)
    sidecars: List[str] = field(default_factory=list)  # proxy-group sidecars to evaluate as attributes
    image_size: Optional[int] = None
    batch_size: int = 128
    num_workers: int = 2
    device: Optional[str] = None
    out: Optional[str] = None  # default <run>/eval, or runs/audit-<teacher>/eval
    seed: int = 0
    eval: EvalConfig = field(default_factory=EvalConfig)


def _run(args) -> int:
    import torch
    from omegaconf import OmegaConf

    import teachers as zoo
    from agglom.config.load import ConfigError
    from agglom.config.schema import Recipe
    from agglom.dist import dist_info
    from agglom.engine.base import pick_device
    from agglom.eval.extract import fidelity_fn, resolve_model_dir, student_encoder, teacher_encoder
    from agglom.eval.protocol import collect_splits, fidelity_section, probe_model, write_all

    if not args.run and not args.teacher:
        raise ConfigError("eval: give run=<run or export dir> and/or teacher=<card name>")
    device = pick_device(dist_info(), args.device)
    models, encoders, fid = {}, {}, None
    if args.run:
        kind = resolve_model_dir(Path(args.run))
        if kind == "run":
            from agglom.runs import load_run_model, run_config

            cfg = run_config(Path(args.run))
            model = load_run_model(Path(args.run)).to(device)
            primary = cfg.name
        else:
            import json

            from agglom.export import load_adapter_pack

            model = load_adapter_pack(Path(args.run)).model.to(device)
            meta = json.loads((Path(args.run) / "adapters.json").read_text())["recipe"]
            cfg = OmegaConf.merge(OmegaConf.structured(Recipe), {"student": meta["student"], "data": meta["data"]})
            primary = Path(args.run).name
        models[primary] = model
        encoders[primary] = student_encoder(model, args.eval.features)
    else:
        cfg = OmegaConf.structured(Recipe)
        primary = f"teacher:{args.teacher}"
    if args.data_root:
        cfg.data.root = args.data_root
        cfg.data.shards = None
    if args.image_size:
        cfg.data.image_size = args.image_size
    cfg.data.num_workers = args.num_workers
    cfg.data.sidecars = list(cfg.data.sidecars) + list(args.sidecars)
    c = 1 if cfg.data.grayscale == "keep" else 3
    mean, std = list(cfg.student.mean)[:c], list(cfg.student.std)[:c]
    audit_names = []
    if args.teacher:
        audit_names.append(args.teacher)
    if args.run and args.audit:
        audit_names += [e.name for e in cfg.teachers if e.name not in audit_names]
    teacher_mods = {}
    for name in audit_names:
        card = zoo.load_card(name)
        t = zoo.build_teacher(card, input_mean=mean, input_std=std, device=str(device))
        teacher_mods[name] = t
        encoders[f"teacher:{name}"] = teacher_encoder(t, args.eval.features)
    if args.run and args.eval.fidelity and models:
        model = next(iter(models.values()))
        fid_teachers = {}
        for spec in model.specs:
            if spec.name in teacher_mods:
                fid_teachers[spec.name] = teacher_mods[spec.name]
            else:
                try:
                    fid_teachers[spec.name] = zoo.build_teacher(zoo.load_card(spec.name), input_mean=mean,
                                                                input_std=std, device=str(device))
                except Exception as e:  # a teacher that cannot be rebuilt here: fidelity without it
                    print(f"agglom eval: fidelity skips teacher {spec.name} ({e})")
        fid = fidelity_fn(model, fid_teachers)

    attr_names = list(args.eval.attributes) or None
    # the recipe's group specs (declared bins, intersections) are evaluated as declared, like in training
    from agglom.train.setup import group_indexer

    specs = [s.name for s in cfg.groups.specs if s.name]
    try:
        indexer = group_indexer(cfg)
    except ValueError:  # another dataset without the run's attributes: evaluate plain attributes only
        indexer, specs = None, []
    exclude_unknown = cfg.groups.unknown != "include"
    from agglom.data.writer import read_datasheet

    label_names = ((read_datasheet(cfg.data.root) or {}).get("label") or {}).get("names")
    results, fidelity = {}, None
    with torch.no_grad():
        for name, enc in encoders.items():
            splits = collect_splits(cfg, enc, device, name, fidelity=fid if name == primary else None,
                                    batch_size=args.batch_size)
            results[name] = probe_model(name, "student" if name == primary and args.run else "teacher", splits,
                                        args.eval, attr_names, seed=args.seed, indexer=indexer, specs=specs,
                                        exclude_unknown=exclude_unknown, label_names=label_names)
            if name == primary and fid is not None and splits["test"].fidelity:
                fidelity = fidelity_section(splits["test"], attr_names, splits["train"].attrs, n_boot=0,
                                            indexer=indexer, specs=specs)
    out = Path(args.out) if args.out else (Path(args.run) / "eval" if args.run else Path("runs") / f"audit-{args.teacher}" / "eval")
    write_all(out, primary, results, fidelity, meta={"data_root": str(cfg.data.root), "features": args.eval.features,
                                                       "device": device.type})
    return 0


evaluate = Command(schema=EvalArgs, run=_run, help="per-group utility + fairness report for a run, export or teacher",
                   positional="run")
