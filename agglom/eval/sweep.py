"""The sweep: one training run + evaluation per (objective, value of the swept knob), then the utility–fairness
front, with every point compared group by group against the knob-at-0 reference.

The knob is ``sweep.key`` (default ``objective.lam``; also e.g. ``data.group_balance`` or
``objective.route_by_audit``), over ``sweep.lams``. The reference is the point whose value is 0 (trained as an
extra run when the grid has no 0). Each point's validation predictions are compared with the reference's (paired
bootstrap, :mod:`agglom.eval.classification.compare`): a point under which some group's validation AUC fell beyond its interval is
flagged ``levels_down`` and the minimax-Pareto choice never takes it while an unflagged point exists
(``sweep.levelling_margin`` > 0: only a fall whose whole interval lies below −margin flags it, the selection's
non-inferiority margin). The test split is compared too, for the report, always with margin 0.

Resumable: a finished point (run.json at the final step, eval/report.json present) is not redone; an interrupted
one resumes from its last checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping

from omegaconf import OmegaConf

from agglom.config.load import ConfigError
from agglom.eval.metrics import headline
from agglom.metrics.pareto import front_summary
from agglom.runs import eval_report


def _short(key: str) -> str:
    return {"objective.lam": "lam"}.get(key, key.rsplit(".", 1)[-1])


def _point_name(base: str, objective: str, key: str, value: float) -> str:
    return f"{base}-{objective}-{_short(key)}{value:g}"


def _done(run_dir: Path, steps: int) -> bool:
    p = run_dir / "run.json"
    return p.is_file() and json.loads(p.read_text()).get("step") == steps


def _train_and_eval(cfg: Any, base: Any, name: str, overrides: Dict[str, Any]) -> Path:
    from agglom.distill import train
    from agglom.eval.run import EvalArgs, run_evaluation

    run_dir = Path(cfg.out_dir) / name
    point = OmegaConf.merge(base, {"name": name}, OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))
    if not _done(run_dir, int(cfg.optim.steps)):
        train(point)
    report = eval_report(run_dir)
    dense = _dense_sweep(cfg)
    if report is None or (dense and "dense" not in report):
        args = OmegaConf.structured(EvalArgs)
        args.run = str(run_dir)
        args.audit = bool(cfg.sweep.audit)
        args.eval = cfg.eval
        if dense:
            args.eval.dense = True
        run_evaluation(args)
    return run_dir


def _dense_sweep(cfg: Any) -> bool:
    """Whether the front's utility or gap is a dense (segmentation) statistic: then every point runs the dense probe."""
    from agglom.config.choices import SWEEP_DENSE

    return cfg.sweep.utility in SWEEP_DENSE or cfg.sweep.gap in SWEEP_DENSE


def _metric(report: Dict[str, Any], attribute: str, name: str) -> Any:
    """The primary model's ``name`` on test: a dense Dice statistic from the dense section, else the headline."""
    from agglom.config.choices import SWEEP_DENSE

    if name in SWEEP_DENSE:
        model = (report.get("dense") or {}).get("models", {}).get(report["primary"])
        if model is None or attribute not in model.get("attributes", {}):
            raise ConfigError(f"sweep: {name!r} is a dense statistic but {report['primary']}'s report has no dense "
                              f"result for {attribute!r} (the data needs masks: `agglom data pack mask_col=|masks=`)")
        return model["attributes"][attribute][name]["value"]
    return headline(report["models"][report["primary"]]["attributes"][attribute]).get(name)


def levelled_beyond_margin(result: Mapping[str, Any], margin: float) -> List[str]:
    """The groups of one attribute's comparison (:func:`agglom.eval.classification.compare.paired_group_deltas`, or one per label
    for a multi-label task) whose AUC fell with the whole paired interval below ``-margin``; margin 0 is the
    comparison's own ``levelled_down``."""
    from agglom.eval.verdict import levelled_beyond

    down = set()
    for r in ([result] if "groups" in result else list(result.values())):
        excluded = set(r.get("excluded", []))
        deltas = {g: {"value": d["delta"], "ci": d["ci"]} for g, d in r["groups"].items()
                  if g not in excluded and d.get("delta") is not None}
        down.update(levelled_beyond(deltas, margin))
    return sorted(down)


def _levelling(point: Path, reference: Path, attribute: str, split: str, n_boot: int,
               margin: float = 0.0) -> Dict[str, Any]:
    from agglom.eval.classification.compare import compare_predictions
    from agglom.eval.predictions import load_predictions

    new, ref = load_predictions(point, split=split), load_predictions(reference, split=split)
    c = compare_predictions(new, ref, [attribute], new_name=point.name, reference_name=reference.name,
                            n_boot=n_boot)
    r = c["attributes"][attribute]
    down = levelled_beyond_margin(r, margin)
    return {"levels_down": bool(down), "levelled_down": down,
            "worst_group_delta": (r.get("worst_group_auc") or {}).get("delta")}


def _sweep_plan(cfg: Any) -> tuple:
    """(the recipe without its sweep section, the swept key, the objectives) — checked before anything trains."""
    sw = cfg.sweep
    base = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "sweep"])
    key = str(sw.key)
    if OmegaConf.select(base, key, default="__missing__") == "__missing__":
        raise ConfigError(f"sweep.key: {key!r} is not a recipe key (e.g. objective.lam, data.group_balance, "
                          "objective.route_by_audit)")
    objectives = list(sw.objectives) or [cfg.objective.group]
    if key == "objective.lam" and objectives == ["erm"] and len(sw.lams) > 1:
        print("agglom sweep: objective.group=erm ignores λ; sweeping the 'excess' objective instead "
              "(choose with sweep.objectives=[...])", flush=True)
        objectives = ["excess"]
    return base, key, objectives


def _point(cfg: Any, objective: str, key: str, value: float, run_dir: Path, reference: Path,
           attribute: str) -> Dict[str, Any]:
    """One point of the front: its test utility and gap, validation worst group, and levelling down against the
    reference (on validation, which selects, and on test, which reports)."""
    sw = cfg.sweep
    report = eval_report(run_dir)
    section = report["models"][report["primary"]]
    if attribute not in section["attributes"]:
        raise ConfigError(f"sweep.attribute {attribute!r} not in the report; attributes: "
                          f"{sorted(section['attributes'])}")
    h = headline(section["attributes"][attribute])
    val = section.get("validation", {}).get(attribute, {})
    p = {"name": run_dir.name, "objective": objective, "key": key, "value": value,
         "utility": _metric(report, attribute, sw.utility), "gap": _metric(report, attribute, sw.gap),
         "worst_group": val.get("worst_group_auc"),
         "test_worst_group_auc": h.get("worst_group_auc"), "run": str(run_dir), "reference": reference.name}
    if key == "objective.lam":
        p["lam"] = value
    if run_dir != reference:
        lv = _levelling(run_dir, reference, attribute, "val", int(cfg.eval.bootstrap), float(sw.levelling_margin))
        lt = _levelling(run_dir, reference, attribute, "test", int(cfg.eval.bootstrap))
        p.update(levels_down=lv["levels_down"], levelled_down_val=lv["levelled_down"],
                 levelled_down_test=lt["levelled_down"], test_worst_group_delta=lt["worst_group_delta"])
    else:
        p.update(levels_down=False, levelled_down_val=[], levelled_down_test=[])
    return p


def _print_front(summary: Dict[str, Any], out_dir: Path) -> None:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    print(f"\n{'point':<40} {'utility':>8} {'gap':>8} {'val worst':>10} pareto  levels down (val)")
    for p in summary["points"]:
        print(f"{p['name']:<40} {f(p.get('utility')):>8} {f(p.get('gap')):>8} {f(p.get('worst_group')):>10} "
              f"{'*' if p.get('pareto') else ' ':^6}  {', '.join(p.get('levelled_down_val') or []) or '-'}")
    sel = summary.get("selected")
    print(f"hypervolume {summary.get('hypervolume')}; minimax-Pareto choice: {sel or 'none'}"
          + (f" ({summary['warning']})" if summary.get("warning") else ""))
    print(f"agglom sweep: {out_dir / 'front.json'}, {out_dir / 'front.png'}", flush=True)


def run_sweep(cfg: Any) -> Dict[str, Any]:
    """Train + evaluate every (objective, value) of the grid and the value-0 reference; write the front."""
    from agglom.eval.report.plots import plot_front

    sw = cfg.sweep
    base, key, objectives = _sweep_plan(cfg)
    attribute = sw.attribute or cfg.groups.by
    out_dir = Path(cfg.out_dir) / f"{cfg.name}-sweep"
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = [(o, float(v)) for o in objectives for v in sw.lams]
    runs: Dict[tuple, Path] = {}
    for i, (objective, value) in enumerate(grid):
        name = _point_name(cfg.name, objective, key, value)
        print(f"agglom sweep: [{i + 1}/{len(grid)}] {name}", flush=True)
        runs[(objective, value)] = _train_and_eval(cfg, base, name, {"objective.group": objective, key: value})
    ref_key = next(((o, v) for o, v in grid if v == 0.0), None)
    if ref_key is not None:
        reference = runs[ref_key]
    else:
        name = _point_name(cfg.name, objectives[0], key, 0.0)
        print(f"agglom sweep: reference {name} ({key} = 0)", flush=True)
        reference = _train_and_eval(cfg, base, name, {"objective.group": objectives[0], key: 0.0})
    points = [_point(cfg, o, key, v, run_dir, reference, attribute) for (o, v), run_dir in runs.items()]
    summary = front_summary(points, utility_name=f"{attribute}:{sw.utility}", gap_name=f"{attribute}:{sw.gap}")
    summary["selection_basis"] = ("validation worst-group AUC (MEDFAIR minimax-Pareto), excluding points that level "
                                  f"down against {reference.name} on validation"
                                  + (f" by more than {float(sw.levelling_margin):g} of AUC (interval and all)"
                                     if float(sw.levelling_margin) > 0 else ""))
    if _dense_sweep(cfg):
        summary["selection_basis"] += ("; the front's dense axes are test-split Dice statistics, shown, not used to "
                                       "choose (the dense probe keeps no per-group validation scores)")
    summary["reference"] = {"name": reference.name, "key": key}
    if points and all(p["levels_down"] for p in points if p["run"] != str(reference)) and len(points) > 1:
        summary["warning"] = "every non-reference point levels down against the reference; the choice is one of them"
    (out_dir / "front.json").write_text(json.dumps(summary, indent=1, default=float))
    plot_front(summary, out_dir / "front.png", title=f"{cfg.name}: utility vs {attribute} gap ({key})")
    _print_front(summary, out_dir)
    return summary
