"""`python -m agglom.ablation [out=runs/demo] [variants=[...]] [attributes=[site]]`: what lifts the worst group.

The demo's fair recipe changes three things at once: a fairness-tuned teacher (``ft-fair``) among the teachers,
partial group balancing of the draws, and the one-sided ``excess`` objective held to ERM's losses. This runner
trains, over the demo's seeds, the recipe with one part taken away (or only one kept), reusing the finished demo in
``out=`` (its data, teachers, feature caches, ERM students and their evaluations; run ``make demo`` first), and
reports each variant against the seed's ERM student and against the full recipe (the demo's own fair students)
with the verdict's paired BCa intervals (:mod:`agglom.eval.verdict`). Writes ``<out>/ablation/summary.md`` and
``summary.json``; finished students and evaluations are reused, so an interrupted run resumes.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from agglom.config.load import ConfigError
from agglom.demo import FAIR, distill_overrides
from agglom.demo_steps import (
    FT_TEACHERS,
    STUDENT,
    TINY,
    demo_recipe,
    eval_report,
    finished,
    module_main,
    run_cli,
    run_jobs,
)

BALANCE = ["data.group_balance=0.75", "heads.zscore_momentum=0"]  # the sampling half of the fair recipe
OBJECTIVE = ["objective.group=excess", "objective.lam=1", "objective.reference=@erm"]  # the objective half
ERM = ["objective.group=erm", "objective.lam=0"]
#: variant -> (the students' overrides, teachers left out of the roster); "full" is the demo's own fair student
VARIANTS: Dict[str, tuple] = {
    "no-ft-fair": (FAIR, ["ft-fair"]),
    "no-ft-general": (FAIR, ["ft-general"]),
    "no-random-cards": (FAIR, list(TINY)),
    "balance-only": (BALANCE, []),
    "objective-only": (OBJECTIVE, []),
    "erm-no-ft-fair": (ERM, ["ft-fair"]),
    # fairness without demographics: the balancing half over proxy clusters (`agglom curate`), judged on the true
    # attribute; the objective half needs ERM's losses per group, which the ERM students logged by site only
    "proxy-balance-only": (BALANCE + ["groups.by=proxy", "data.sidecars=[@proxy]"], []),
}
PROXY_TEACHER = "ft-general"  # whose summary embeddings `agglom curate` clusters for the proxy groups by default


def split_variant(name: str) -> tuple:
    """``proxy-balance-only:tiny-clip`` -> ("proxy-balance-only", "tiny-clip"): the proxy variant takes the teacher
    whose embeddings `agglom curate` clusters after a colon (a demo teacher; default :data:`PROXY_TEACHER`), so one
    run compares proxies that do and do not recover the attribute. Any other variant takes no argument."""
    base, _, arg = name.partition(":")
    return base, arg or None


def _proxy_teacher(a: Any, variant: str) -> str:
    return split_variant(variant)[1] or PROXY_TEACHER
assert sorted(BALANCE + OBJECTIVE) == sorted(FAIR), "the two halves must make up the demo's fair recipe"


@dataclass
class AblationArgs:
    out: str = "runs/demo"  # a finished demo's folder (teachers, caches, ERM and fair students)
    data: str = "data/synth"  # the demo's benchmark
    variants: List[str] = field(default_factory=lambda: [v for v in VARIANTS if v != "erm-no-ft-fair"])  # of VARIANTS
    attributes: List[str] = field(default_factory=lambda: ["site"])  # verdicts by these prediction columns
    # a numeric attribute column is judged in bins (the groups.specs code path: `[45,65)`, `unknown` outside every
    # bin); the evaluation's predictions usually hold age already grouped (`<60`, `>=60`), used as they are
    bins: Dict[str, List[float]] = field(default_factory=lambda: {"age": [20, 45, 65, 90]})
    proxy_k: int = 2  # proxy-balance-only: clusters `agglom curate` makes (the demo's sites: 2)
    seeds: int = 3
    steps: int = 600  # must be the demo's steps (the ERM students are reused)
    bootstrap: int = 500  # the verdict's paired bootstrap replicates
    report_bootstrap: int = 100
    image_size: int = 64
    batch_size: int = 32
    num_workers: int = 2
    jobs: int = 0  # students side by side, as in the demo (agglom/demo.py `jobs`): 0 one per core, 1 in this process


def roster(out: Path, leave_out: Sequence[str]) -> str:
    """The demo's teachers (tiny random cards, the two fine-tuned ones) read from its cache, minus ``leave_out``."""
    tdir, cache = out / "teachers", out / "cache"
    names = [t for t in [*TINY, *FT_TEACHERS] if t not in leave_out]
    return "[" + ", ".join(f"{{name: {t if t in TINY else tdir / t}, cache: {cache}}}" for t in names) + "]"


def _run_dir(a: Any, variant: str, seed: int) -> Path:
    return Path(a.out) / "ablation" / f"{variant.replace(':', '-')}-s{seed}"


def _train_job(a: Any, variant: str, seed: int, common: List[str]) -> Optional[Any]:
    """The `agglom train` of one variant and seed, or None when it finished before (reused)."""
    from agglom.parallel_runs import Job

    out = Path(a.out)
    overrides, leave_out = VARIANTS[split_variant(variant)[0]]
    run = _run_dir(a, variant, seed)
    if finished(run, a.steps):
        print(f"reusing {run}")
        return None
    erm = out / f"student-erm-s{seed}"
    proxy = (str(_proxy_groups(a, common, _proxy_teacher(a, variant))) if any("@proxy" in x for x in overrides)
             else "")  # `agglom curate` runs only for a proxy variant
    extra = [x.replace("@erm", str(erm)).replace("@proxy", proxy) for x in overrides]
    return Job(["train", f"recipe={demo_recipe()}", f"name={run.name}", f"out_dir={run.parent}",
                f"teachers={roster(out, leave_out)}", f"seed={seed}", f"data.seed={seed}",
                f"student.model_args={STUDENT}", f"optim.steps={a.steps}", f"optim.warmup_steps={max(1, a.steps // 10)}",
                f"log.interval={max(1, a.steps // 4)}", f"log.checkpoint_interval={a.steps}", *common, *extra],
               run.name, run.parent / "logs" / f"{run.name}.log")


def _proxy_groups(a: Any, common: List[str], teacher: str) -> Path:
    """The proxy-group sidecar (k clusters of ``teacher``'s embeddings over every split the students read), made once
    by `agglom curate` and reused."""
    name = "proxy_groups.json" if teacher == PROXY_TEACHER else f"proxy_groups-{teacher}.json"
    out = Path(a.out) / "ablation" / name
    if not out.is_file():
        splits = ["train", "val", "test"] + [x.split("[", 1)[1].rstrip("]") for x in common
                                             if x.startswith("data.distill_splits=")]
        run_cli(["curate", f"root={a.data}", f"teacher={teacher if teacher in TINY else Path(a.out) / 'teachers' / teacher}", f"k={a.proxy_k}",
              f"splits=[{','.join(splits)}]", f"image_size={a.image_size}", "num_workers=0", "progress=off",
              f"out={out}"])
    return out


def _eval_job(a: Any, run: Path) -> Optional[Any]:
    """The `agglom eval` of one finished variant student, or None when its evaluation exists (reused)."""
    from agglom.parallel_runs import Job

    if eval_report(run) is not None:
        print(f"reusing {run / 'eval'}")
        return None
    return Job(["eval", str(run), "eval.features=adapters", f"eval.bootstrap={a.report_bootstrap}",
                "eval.label_fractions=[]", "num_workers=0"], f"eval {run.name}",
               run.parent / "logs" / f"eval-{run.name}.log")


def _row(v: Dict[str, Any]) -> Dict[str, Any]:
    d = v["fair_vs_erm"]
    return {"worst": d["worst"], "auc": d["auc"], "groups": {g: d[f"g:{g}"] for g in v["groups"]},
            "levelled_down": v["levelled_down"], "student_vs_best_teacher": v.get("student_vs_best_teacher", {}),
            # the absolute AUCs (mean over seeds, with intervals) of the reference and of the variant
            "reference": _absolute(v["students"]["erm"], v["groups"]),
            "variant": _absolute(v["students"]["fair"], v["groups"])}


def _absolute(s: Mapping[str, Any], groups: Sequence[str]) -> Dict[str, Any]:
    return {"auc": s["auc"], "worst": s["worst"], "groups": {g: s[f"g:{g}"] for g in groups}}


def binned(preds: Dict[str, Any], bins: Mapping[str, Sequence[float]]) -> Dict[str, Any]:
    """``preds`` with each numeric attribute of ``bins`` replaced by its bin's name (what the verdict groups by)."""
    import numpy as np

    from agglom.data.binning import BinCounter

    out = dict(preds)
    for attr, edges in bins.items():
        # a column the evaluation already wrote as groups (e.g. age as `<60` / `>=60`) is kept as it is
        if attr in out and any(isinstance(_number(v), float) for v in out[attr]):
            counter = BinCounter({attr: list(edges)})
            out[attr] = np.asarray([counter.bin_of(attr, {attr: _number(v)})[0] for v in out[attr]])
    return out


def _number(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v  # not a number: its bin is `unknown`, counted as such


def compare(a: Any, runs: Dict[str, List[Path]], attribute: str) -> Dict[str, Any]:
    """Per variant: its verdict against ERM and against the full recipe, on test, over the seeds."""
    from agglom.eval.predictions import load_predictions
    from agglom.eval.verdict import verdict

    out = Path(a.out)
    bins = {attribute: a.bins[attribute]} if attribute in a.bins else {}
    preds = {k: [binned(load_predictions(r), bins) for r in rs] for k, rs in runs.items()}
    audit = eval_report(out / "student-erm-s0")["models"]
    teachers = {Path(m.split(":", 1)[1]).name: binned(load_predictions(out / "student-erm-s0", model=m), bins)
                for m in audit if m.startswith("teacher:")}
    res: Dict[str, Any] = {}
    for name in ["full", *a.variants]:
        seeds = [{"erm": e, "fair": f} for e, f in zip(preds["erm"], preds[name])]
        vs_erm = verdict(seeds, teachers, attribute, n_boot=a.bootstrap)
        row = {"vs_erm": _row(vs_erm), "n_per_group": vs_erm["n_per_group"]}
        if name != "full":
            full = [{"erm": f, "fair": x} for f, x in zip(preds["full"], preds[name])]
            row["vs_full"] = _row(verdict(full, {}, attribute, n_boot=a.bootstrap))
        res[name] = row
    return res


def run_ablation(a: Any) -> Dict[str, Any]:
    out = Path(a.out)
    def known(v: str) -> bool:
        base, teacher = split_variant(v)
        return base in VARIANTS and (teacher is None or (base == "proxy-balance-only" and teacher in [*TINY, *FT_TEACHERS]))

    unknown = [v for v in a.variants if not known(v)]
    if unknown:
        raise ConfigError(f"variants: unknown {unknown}; choose from {', '.join(VARIANTS)} (proxy-balance-only:<teacher> "
                          f"with a teacher of {', '.join([*TINY, *FT_TEACHERS])})")
    missing = [p for s in range(a.seeds) for p in (out / f"student-erm-s{s}", out / f"student-fair-s{s}")
               if eval_report(p) is None]
    if missing:
        raise ConfigError(f"{out}: the demo has not finished ({missing[0]} has no evaluation); run "
                          f"`python -m agglom.demo out={out}` first")
    common = [f"data.root={a.data}", f"data.image_size={a.image_size}", f"data.batch_size={a.batch_size}",
              f"data.num_workers={a.num_workers}", "groups.by=site", *distill_overrides(Path(a.data))]
    t0 = time.perf_counter()
    runs: Dict[str, List[Path]] = {"erm": [out / f"student-erm-s{s}" for s in range(a.seeds)],
                                   "full": [out / f"student-fair-s{s}" for s in range(a.seeds)]}
    for variant in a.variants:
        runs[variant] = [_run_dir(a, variant, s) for s in range(a.seeds)]
    pairs = [(v, s) for v in a.variants for s in range(a.seeds)]
    run_jobs(a, [j for j in (_train_job(a, v, s, common) for v, s in pairs) if j is not None])
    run_jobs(a, [j for j in (_eval_job(a, _run_dir(a, v, s)) for v, s in pairs) if j is not None])
    result = {"variants": {v: {"overrides": VARIANTS[split_variant(v)[0]][0],
                               "teachers_left_out": VARIANTS[split_variant(v)[0]][1],
                               **({"proxy_teacher": _proxy_teacher(a, v), "proxy_k": a.proxy_k}
                                  if v.startswith("proxy") else {})}
                           for v in a.variants},
              "full": FAIR, "seeds": a.seeds, "steps": a.steps,
              "by_attribute": {attr: compare(a, runs, attr) for attr in a.attributes},
              "seconds": round(time.perf_counter() - t0, 1)}
    from agglom.ablation_report import render

    (out / "ablation").mkdir(parents=True, exist_ok=True)
    (out / "ablation" / "summary.json").write_text(json.dumps(result, indent=1, default=float))
    text = "\n".join(render(result))
    (out / "ablation" / "summary.md").write_text(text + "\n")
    print(text, flush=True)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    return module_main(argv, AblationArgs, run_ablation, "ablation", (__doc__ or "").strip() + "\n")


if __name__ == "__main__":
    sys.exit(main())
