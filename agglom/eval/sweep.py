"""The λ sweep: one training run + evaluation per (objective, λ), then the utility–fairness front.

Resumable: a finished point (run.json at the final step, eval/report.json present) is not redone; an
interrupted one resumes from its last checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

from omegaconf import OmegaConf

from agglom.eval.metrics import headline
from agglom.eval.pareto import front_summary


def _point_name(base: str, objective: str, lam: float) -> str:
    return f"{base}-{objective}-lam{lam:g}"


def _done(run_dir: Path, steps: int) -> bool:
    p = run_dir / "run.json"
    return p.is_file() and json.loads(p.read_text()).get("step") == steps


def run_sweep(cfg: Any) -> Dict[str, Any]:
    from agglom.commands.evaluate import EvalArgs
    from agglom.commands.evaluate import _run as run_eval
    from agglom.train.loop import train

    sw = cfg.sweep
    base = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "sweep"])
    objectives = list(sw.objectives) or [cfg.objective.group]
    if objectives == ["erm"] and len(sw.lams) > 1:
        print("agglom sweep: objective.group=erm ignores λ; sweeping the 'variance' objective instead "
              "(choose with sweep.objectives=[...])", flush=True)
        objectives = ["variance"]
    attribute = sw.attribute or cfg.groups.by
    out_dir = Path(cfg.out_dir) / f"{cfg.name}-sweep"
    out_dir.mkdir(parents=True, exist_ok=True)
    points: List[Dict[str, Any]] = []
    grid = [(o, float(lam)) for o in objectives for lam in sw.lams]
    for i, (objective, lam) in enumerate(grid):
        name = _point_name(cfg.name, objective, lam)
        run_dir = Path(cfg.out_dir) / name
        print(f"agglom sweep: [{i + 1}/{len(grid)}] {name}", flush=True)
        point = OmegaConf.merge(base, {"name": name, "objective": {"group": objective, "lam": lam}})
        if not _done(run_dir, int(cfg.optim.steps)):
            train(point)
        report_path = run_dir / "eval" / "report.json"
        if not report_path.is_file():
            args = OmegaConf.structured(EvalArgs)
            args.run = str(run_dir)
            args.audit = bool(sw.audit)
            args.eval = cfg.eval
            run_eval(args)
        report = json.loads(report_path.read_text())
        section = report["models"][report["primary"]]
        if attribute not in section["attributes"]:
            raise KeyError(f"sweep.attribute {attribute!r} not in the report; attributes: {sorted(section['attributes'])}")
        h = headline(section["attributes"][attribute])
        val = section.get("validation", {}).get(attribute, {})
        points.append({"name": name, "objective": objective, "lam": lam, "utility": h.get(sw.utility),
                       "gap": h.get(sw.gap), "worst_group": val.get("worst_group_auc"),
                       "test_worst_group_auc": h.get("worst_group_auc"), "run": str(run_dir)})
    summary = front_summary(points, utility_name=f"{attribute}:{sw.utility}", gap_name=f"{attribute}:{sw.gap}")
    summary["selection_basis"] = "validation worst-group AUC (MEDFAIR minimax-Pareto)"
    (out_dir / "front.json").write_text(json.dumps(summary, indent=1, default=float))
    from agglom.eval.plots import plot_front

    plot_front(summary, out_dir / "front.png", title=f"{cfg.name}: utility vs {attribute} gap")
    print(f"\n{'point':<36} {'utility':>8} {'gap':>8} {'val worst':>10} pareto")
    for p in summary["points"]:
        def f(v):
            return "n/a" if v is None else f"{v:.3f}"
        print(f"{p['name']:<36} {f(p.get('utility')):>8} {f(p.get('gap')):>8} {f(p.get('worst_group')):>10} "
              f"{'*' if p.get('pareto') else ''}")
    sel = summary.get("selected")
    print(f"hypervolume {summary.get('hypervolume')}; minimax-Pareto choice: {sel or 'none'}")
    print(f"agglom sweep: {out_dir / 'front.json'}, {out_dir / 'front.png'}", flush=True)
    return summary
