"""`make demo`: the review's two claims, tested end to end on CPU through the real CLI, over seeds, with intervals.

1. the synthetic bias benchmark (a rare acquisition site B, ~8%; a test split large enough to decide);
2. two fine-tuned teachers with known, different group strengths, made by `agglom finetune`: a *general* one
   trained on data dominated by the majority site (site B down-weighted ×0.1: strong on A, weak on B) and a
   *fairness-tuned* one trained group-balanced (even across sites); next to the tiny random CLIP, DINOv2 and SAM
   cards; all five cached once with `agglom cache`;
3. for each seed, two students distilled from the five teachers: ERM (λ = 0) and the fair recipe (`fair`);
4. `agglom eval`: the same linear-probe protocol on every student and (once) every teacher; the fair student is
   compared with the ERM student of its seed, group by group (paired bootstrap, levelling-down flag);
5. `agglom export` of the seed-0 students;
6. the verdict over seeds (:mod:`agglom.eval.verdict`): student vs best teacher, fair vs ERM (worst-group AUC, AUC
   gap, overall AUC), levelling down, fidelity parity — each with a 95% interval and a plain holds / does not hold.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from agglom.config.load import ConfigError, read_recipe
from agglom.demo_steps import (
    FT_MODEL,
    FT_TEACHERS,
    STUDENT,
    TINY,
    demo_recipe,
    eval_report,
    finished,
    module_main,
    run_cli,
    run_jobs,
    step,
)

#: the fair candidate's recipe, chosen by measurement (docs/fairness.md): partial group balancing (a group's share
#: of the draws ∝ n_g^0.25), the normalisers at the natural distribution's statistics, and the one-sided ``excess``
#: objective holding every group's distillation loss to its seed's ERM student's (the sampling cannot buy the rare
#: group's lift with the common group's loss); full balancing (β = 1) cost site A AUC beyond the paired interval
FAIR = ["data.group_balance=0.75", "heads.zscore_momentum=0", "objective.group=excess", "objective.lam=1",
        "objective.reference=@erm"]
ERM_RUN = "@erm"  #: in a ``fair=[...]`` override: the seed's ERM student's run dir (``objective.reference=@erm``)
#: how the fair student is chosen (agglom.eval.selection.MODES; repeated here so `--help` imports no torch)
SELECT_MODES = ("validation", "always")


@dataclass
class DemoArgs:
    out: str = "runs/demo"  # everything the demo writes, except the data
    data: str = "data/synth"  # the synthetic benchmark (generated when missing)
    n: int = 9000  # synthetic images: 2250 train / 2250 val / 4500 test (~360 of the rare site in test)
    unlabeled: int = 13500  # more images, no labels (split `unlabeled`): every student distils on them too; 0: none
    image_size: int = 64
    synth: List[str] = field(default_factory=list)  # more `agglom data synth` options, e.g. [seed=7, site_frac=0.06]
    seeds: int = 3  # students per recipe (ERM and fair), one per seed
    steps: int = 600  # distillation steps per student
    finetune_steps: int = 800  # steps per fine-tuned teacher
    fair: List[str] = field(default_factory=lambda: list(FAIR))  # the fair candidate's overrides (@erm: its ERM run)
    select: str = "validation"  # validation: keep the fair recipe only where it lifts the val worst group; always
    levelling_margin: float = 0.0  # validation: a group's AUC fall below -margin (interval and all) levels it down
    batch_size: int = 32
    num_workers: int = 2
    eval_workers: int = 0  # eval's loader workers: on 2 cores, decoding beside the probe's GEMMs cost 49 s vs 41 s a run
    bootstrap: int = 500  # replicates of the verdict's paired bootstrap
    report_bootstrap: int = 100  # replicates behind each report's intervals
    quick: bool = False  # a reduced run (tests): fewer samples, steps, seeds and replicates
    # independent runs side by side, each a child process with cores/jobs threads (0: one per core, at most 4);
    # 1: one at a time in this process with torch's default threads. Students differ in rounding between settings
    jobs: int = 0
    # the teacher set: synthetic = the tiny random cards and two fine-tuned teachers (this demo); real = LiteMedSAM
    # and the two fine-tuned teachers on a 360-image subset (agglom/demo_real.py; `teachers=real --help` lists its keys)
    teachers: str = "synthetic"


def _sizes(a: Any) -> Dict[str, int]:
    """The run's sizes; ``quick`` caps them for a smoke run."""
    z = {"n": a.n, "unlabeled": a.unlabeled, "steps": a.steps, "ft_steps": a.finetune_steps, "seeds": a.seeds,
         "boot": a.bootstrap, "rboot": a.report_bootstrap}
    if a.quick:
        caps = {"n": 600, "unlabeled": 200, "steps": 12, "ft_steps": 10, "seeds": 2, "boot": 30, "rboot": 10}
        z = {k: min(v, caps[k]) for k, v in z.items()}
        z["dense_steps"] = 100  # the dense probe's Adam steps (eval.dense_steps, 300 otherwise)
    return z


def distill_overrides(data: Path) -> List[str]:
    """``data.distill_splits=[unlabeled]`` where the benchmark has that split (a benchmark generated by an older
    demo, without it, is distilled on its train split alone), else nothing."""
    from agglom.data.synth import UNLABELED_SPLIT

    sheet = json.loads((data / "dataset.json").read_text())
    if UNLABELED_SPLIT in (sheet.get("splits") or {}):
        return [f"data.distill_splits=[{UNLABELED_SPLIT}]"]
    print(f"note: {data} has no {UNLABELED_SPLIT!r} split (unlabeled=0, or written by an older demo): the students "
          "distil on the train split alone; delete it to regenerate", flush=True)
    return []


def _teachers_phase(a: Any, z: Dict[str, int], common: List[str], out: Path, distill: List[str]) -> tuple:
    """The two fine-tuned teachers (reused when exported; fine-tuned on the labelled train split only), then every
    teacher's feature cache (over the distill splits too); (roster, tdir)."""
    from agglom.parallel_runs import Job

    tdir = out / "teachers"
    jobs = []
    for name, extra in FT_TEACHERS.items():
        if (tdir / name / "card.yaml").is_file():
            print(f"reusing {tdir / name}")
            continue
        ft = z["ft_steps"]
        jobs.append(Job(["finetune", "model=vit_small_patch16_224", f"model_args={FT_MODEL}", f"name={name}",
                         f"out_dir={tdir}", f"optim.steps={ft}", f"optim.warmup_steps={max(1, ft // 20)}",
                         "val_interval=0", f"log_interval={max(1, ft // 4)}", *common, *extra],
                        f"teacher {name}", out / "logs" / f"finetune-{name}.log"))
    run_jobs(a, jobs)
    teachers = TINY + [str(tdir / name) for name in FT_TEACHERS]
    cache = out / "cache"
    run_cli(["cache", f"recipe={demo_recipe()}", *common, *distill, "teachers=[" + ", ".join(f"{{name: {x}}}" for x in teachers)
          + "]", f"cache.out={cache}"])
    return "[" + ", ".join(f"{{name: {x}, cache: {cache}}}" for x in teachers) + "]", tdir


def fair_tag(fair: Sequence[str]) -> str:
    """The fair students' run-folder tag: ``fair`` for the default recipe, ``fair-<hash>`` for any other, so that
    another ``fair=[...]`` reuses the ERM students, teachers and caches of the same ``out=`` but never a fair
    student trained with other settings."""
    import hashlib

    if list(fair) == FAIR:
        return "fair"
    return "fair-" + hashlib.sha1(" ".join(fair).encode()).hexdigest()[:8]


def with_erm_run(overrides: Sequence[str], erm_run: Path) -> List[str]:
    """``overrides`` with :data:`ERM_RUN` replaced by the seed's ERM run dir (``objective.reference=@erm``)."""
    return [x.replace(ERM_RUN, str(erm_run)) for x in overrides]


def recipe_mismatch(run: Path, overrides: Sequence[str]) -> List[str]:
    """The ``key=value`` overrides that ``run``'s saved config.yaml does not hold (``key: saved, asked``): a finished
    student is reused only when it was trained with the settings asked for now."""
    from omegaconf import OmegaConf

    saved = OmegaConf.create(read_recipe(str(run / "config.yaml")))
    bad = []
    for o in overrides:
        key = o.split("=", 1)[0]
        want = OmegaConf.select(OmegaConf.from_dotlist([o]), key)
        have = OmegaConf.select(saved, key, default=None)
        if have != want:
            bad.append(f"{key}: saved {have!r}, asked {want!r}")
    return bad


def _students_phase(a: Any, z: Dict[str, int], common: List[str], out: Path, roster: str,
                    distill: List[str]) -> Dict[str, List[Path]]:
    """Per seed an ERM and a fair student, and their evaluations, as one batch of jobs, each started as soon as what
    it needs has finished (:class:`agglom.parallel_runs.Job` ``after``): a fair student after its seed's ERM student
    (it is held to that student's losses), an evaluation after its student, a fair student's evaluation after its ERM
    twin's (it is compared with it). Run as phases, one after another, three students on two cores left one core
    idle while the third ran alone, twice per phase. Finished students and evaluations are reused."""
    train, runs = _train_jobs(a, z, common, out, roster, distill)
    evals = _eval_jobs(a, z, runs, retrained={j.label for j in train.values()})
    # the first ready job in this order starts first: the students before the evaluations, ERM before fair, so
    # the longest chain (an ERM student, its fair twin, the twin's evaluation) starts early; ordered seed by seed,
    # the last seed's ERM student waited behind two evaluations and its chain ran alone at the end (a core idle)
    jobs = {**train, **evals}
    run_jobs(a, [jobs[k] for k in [(stage, kind, s) for stage in ("train", "eval") for kind in ("erm", "fair")
                                   for s in range(z["seeds"])] if k in jobs])
    for run in runs["fair"]:
        (run / "eval" / ".compared").write_text("")
    return runs


def _train_jobs(a: Any, z: Dict[str, int], common: List[str], out: Path, roster: str,
                distill: List[str]) -> tuple:
    """``({("train", kind, seed): Job}, {kind: [run dir per seed]})``: an ERM and a fair student per seed, those
    finished with the same settings reused (a finished one trained otherwise is refused)."""
    from agglom.parallel_runs import Job

    recipes = {"erm": [*distill, "objective.group=erm", "objective.lam=0"], "fair": [*distill, *a.fair]}
    runs: Dict[str, List[Path]] = {"erm": [], "fair": []}
    jobs: Dict[tuple, Any] = {}
    steps = z["steps"]
    for kind, recipe in recipes.items():
        for s in range(z["seeds"]):
            run = out / f"student-{kind if kind == 'erm' else fair_tag(a.fair)}-s{s}"
            runs[kind].append(run)
            erm = out / f"student-erm-s{s}"
            extra = with_erm_run(recipe, erm)
            if finished(run, steps):
                bad = recipe_mismatch(run, extra)
                if bad:
                    raise ConfigError(f"{run} was trained with other settings ({'; '.join(bad)}): delete it, or give "
                                      "the demo another out=")
                print(f"reusing {run}")
                continue
            jobs[("train", kind, s)] = Job(
                ["train", f"recipe={demo_recipe()}", f"name={run.name}", f"out_dir={out}", f"teachers={roster}",
                 f"seed={s}", f"data.seed={s}", f"student.model_args={STUDENT}", f"optim.steps={steps}",
                 f"optim.warmup_steps={max(1, steps // 10)}", f"log.interval={max(1, steps // 4)}",
                 f"log.checkpoint_interval={steps}", *common, *extra], run.name, out / "logs" / f"{run.name}.log",
                after=(erm.name,) if kind == "fair" else ())
    return jobs, runs


def _eval_jobs(a: Any, z: Dict[str, int], runs: Dict[str, List[Path]], retrained: set) -> Dict[tuple, Any]:
    """``{("eval", kind, seed): Job}``: the same probe on every student (seed 0's ERM run also audits the teachers
    and runs the SAM-decoder swap), a fair student against its seed's ERM twin; an evaluation already there is
    reused unless its student is trained again (``retrained``: the labels of the training jobs)."""
    ev = ["eval.features=adapters", f"eval.bootstrap={z['rboot']}", "eval.label_fractions=[]",
          f"num_workers={a.eval_workers}", "eval.dense=true"] + (
        [f"eval.dense_steps={z['dense_steps']}"] if "dense_steps" in z else [])
    from agglom.parallel_runs import Job

    jobs: Dict[tuple, Any] = {}
    for kind in ("erm", "fair"):
        for s in range(z["seeds"]):
            run, erm = runs[kind][s], runs["erm"][s]
            audit = kind == "erm" and s == 0
            fresh = run.name not in retrained and (kind == "erm" or erm.name not in retrained)
            if fresh and _evaluated(run, audit) and (kind == "erm" or (run / "eval" / ".compared").is_file()):
                print(f"reusing {run / 'eval'}")
                continue
            extra = ["audit=true", "eval.sam_prompts=true"] if audit else []
            after = [run.name]
            if kind == "fair":
                extra.append(f"reference={erm}")
                after.append(f"eval {erm.name}")
            jobs[("eval", kind, s)] = Job(["eval", str(run), *ev, *extra], f"eval {run.name}",
                                          run.parent / "logs" / f"eval-{run.name}.log", after=tuple(after))
    return jobs


def _evaluated(run: Path, audit: bool) -> bool:
    """The run's report exists and holds what the demo reads (the dense section; the SAM-decoder one when audited)."""
    r = eval_report(run)
    if r is None:
        return False
    return "dense" in r and (not audit or "sam_prompts" in r)


def _dense_phase(z: Dict[str, int], runs: Dict[str, List[Path]]) -> Dict[str, Any]:
    """Dense probe Dice of every student (over seeds) and audited teacher (seed-0 ERM audit), paired on test."""
    from agglom.eval.dense.verdict import dense_verdict, load_dense_rows

    def models(run: Path) -> Dict[str, str]:
        return {m: s["kind"] for m, s in eval_report(run)["dense"]["models"]
                .items()}

    students = {k: [load_dense_rows(r, next(m for m, kd in models(r).items() if kd == "student")) for r in runs[k]]
                for k in ("erm", "fair")}
    teachers = {Path(m.split(":", 1)[1]).name: load_dense_rows(runs["erm"][0], m)
                for m, kd in models(runs["erm"][0]).items() if kd != "student"}
    return dense_verdict(students, teachers, "site", n_boot=z["boot"])


def _verdict_inputs(z: Dict[str, int], runs: Dict[str, List[Path]], split: str) -> tuple:
    """Per seed ``{"erm": preds, "fair": preds}`` on ``split``, and (test only) the audited teachers' predictions
    and every student's fidelity headline."""
    from agglom.eval.fidelity.fidelity import fidelity_headline
    from agglom.eval.predictions import load_predictions

    seeds = range(z["seeds"])
    preds = [{k: load_predictions(runs[k][s], split=split) for k in ("erm", "fair")} for s in seeds]
    if split != "test":
        return preds, {}, None
    reports = [{k: eval_report(runs[k][s]) for k in ("erm", "fair")}
               for s in seeds]
    audited = [m for m in reports[0]["erm"]["models"] if m.startswith("teacher:")]  # the seed-0 ERM audit
    teacher_preds = {Path(m.split(":", 1)[1]).name: load_predictions(runs["erm"][0], model=m) for m in audited}
    fid = [{k: fidelity_headline((r[k].get("fidelity") or {}).get("site", {})) for k in r} for r in reports]
    return preds, teacher_preds, fid


def _verdict_phase(a: Any, z: Dict[str, int], runs: Dict[str, List[Path]]) -> Dict[str, Any]:
    """The fair recipe chosen on validation (:mod:`agglom.eval.selection`), then the verdict over seeds on test
    for the chosen student; where ERM was kept, what the candidate recipe would have done on test is reported too."""
    from agglom.eval.selection import select_recipe
    from agglom.eval.verdict import TARGETS, verdict

    val, _, _ = _verdict_inputs(z, runs, "val")
    sel = select_recipe({"fair": verdict(val, {}, "site", n_boot=z["boot"])}, mode=a.select,
                        max_overall_cost=TARGETS["max_overall_cost"], min_lift=TARGETS["worst_group_lift"] / 2,
                        margin=a.levelling_margin)
    preds, teacher_preds, fid = _verdict_inputs(z, runs, "test")
    if sel["chosen"] == "fair":
        v = verdict(preds, teacher_preds, "site", fidelity=fid, n_boot=z["boot"])
    else:  # the chosen "fair" student is the ERM one: compare it with itself, and report the candidate apart
        v = verdict([{"erm": p["erm"], "fair": p["erm"]} for p in preds], teacher_preds, "site",
                    fidelity=[{"erm": f["erm"], "fair": f["erm"]} for f in fid], n_boot=z["boot"])
        c = verdict(preds, {}, "site", fidelity=fid, n_boot=z["boot"])
        v["candidate_on_test"] = {k: c[k] for k in ("fair_vs_erm", "levelled_down", "students", "checks")}
    v["selection"] = sel
    v["dense"] = _dense_phase(z, runs)
    return v


def run_demo(a: Any) -> Dict[str, Any]:
    """The six phases, each reusing what an earlier (interrupted) demo already finished."""
    out, data = Path(a.out), Path(a.data)
    t_all = time.perf_counter()
    timings: Dict[str, float] = {}
    z = _sizes(a)
    if a.teachers != "synthetic":
        raise ConfigError(f"teachers={a.teachers!r}: choose synthetic (the default) or real")
    if a.select not in SELECT_MODES or not a.levelling_margin >= 0:
        raise ConfigError(f"select={a.select!r}, levelling_margin={a.levelling_margin!r}: choose select from "
                          f"{', '.join(SELECT_MODES)} and a margin >= 0")
    t = step("1/6 synthetic bias benchmark")
    if (data / "dataset.json").is_file():
        print(f"reusing {data} (delete it to regenerate)")
        run_cli(["data", "info", str(data)])
    else:
        run_cli(["data", "synth", f"out={data}", f"n={z['n']}", f"unlabeled={z['unlabeled']}", f"image_size={a.image_size}",
              *a.synth])
    timings["data"] = time.perf_counter() - t
    common = [f"data.root={data}", f"data.image_size={a.image_size}", f"data.batch_size={a.batch_size}",
              f"data.num_workers={a.num_workers}", "groups.by=site"]
    t = step("2/6 teachers: a general one (site B down-weighted) and a fairness-tuned one (group-balanced)")
    distill = distill_overrides(data)
    roster, tdir = _teachers_phase(a, z, common, out, distill)
    timings["teachers"] = time.perf_counter() - t
    t = step(f"3-4/6 agglomeration, {z['seeds']} seed(s) x (ERM, fair: {' '.join(a.fair) or 'nothing'}), and "
             "evaluation: the same probe on every student and teacher; fair vs ERM, group by group")
    runs = _students_phase(a, z, common, out, roster, distill)
    timings["students"] = time.perf_counter() - t  # training and evaluation, overlapped
    t = step("5/6 export: timm folder + adapter pack + model card")
    for kind in ("erm", "fair"):
        run_cli(["export", str(runs[kind][0]), f"out={runs[kind][0] / 'export'}"])
    timings["export"] = time.perf_counter() - t
    step("6/6 verdict")
    v = _verdict_phase(a, z, runs)
    timings["total"] = time.perf_counter() - t_all
    text = summary_markdown(a, v, runs, tdir, data, out, timings)
    (out / "summary.md").write_text(text)
    if fair_tag(a.fair) != "fair":  # the default recipe's summary stays beside it
        (out / f"summary-{fair_tag(a.fair)}.md").write_text(text)
    blob = json.dumps({"timings_s": timings, "fair": list(a.fair), "select": a.select, "verdict": v}, indent=1,
                      default=float)
    (out / "summary.json").write_text(blob)
    if fair_tag(a.fair) != "fair":
        (out / f"summary-{fair_tag(a.fair)}.json").write_text(blob)
    print(text, flush=True)
    print(f"agglom demo: done in {timings['total']:.0f} s; summary in {out / 'summary.md'}")
    return {"timings": timings, "out": str(out), "verdict": v}


def summary_markdown(a: Any, v: Dict[str, Any], runs: Dict[str, List[Path]], tdir: Path, data: Path, out: Path,
                     timings: Dict[str, float]) -> str:
    from agglom.eval.verdict import render_verdict

    f = v.get("fidelity")
    lines = ["# agglom demo: the review's two claims, over seeds", "",
             f"Data `{data}`; runs `{out}`; total {timings['total']:.0f} s "
             f"({', '.join(f'{k} {x:.0f} s' for k, x in timings.items() if k != 'total')}).", "",
             f"Students: a timm ViT distilled from five teachers (tiny CLIP, DINOv2, SAM with random weights; "
             f"`ft-general`, fine-tuned with site B down-weighted; `ft-fair`, fine-tuned group-balanced). ERM = λ = 0, "
             f"natural sampling; fair = the recipe chosen on validation between ERM and `{' '.join(a.fair)}`. Probe features: the student's adapter summaries "
             "concatenated (RADIO's choice), each teacher's own summary embedding; a logistic probe on the train "
             "split, threshold on val, scored on test.", "",
             *_selection_lines(a, v), "## Verdict (the chosen fair student against ERM, on test)", "",
             *render_verdict(v), ""]
    if f:
        lines += ["## Fidelity (global-normalised R², mean over seeds; group values clipped to [0, 1])", "",
                  f"- ERM: mean {f['erm']['mean']:.3f}, worst per-teacher site gap {f['erm']['worst_gap']:.3f}",
                  f"- fair: mean {f['fair']['mean']:.3f}, worst per-teacher site gap {f['fair']['worst_gap']:.3f}", ""]
    if v.get("dense"):
        from agglom.eval.dense.verdict import render_dense_verdict
        from agglom.eval.sam.report import sam_markdown

        lines += ["## Segmentation: dense probe Dice per group (students and teachers)", "",
                  *render_dense_verdict(v["dense"]), ""]
        sam = eval_report(runs["erm"][0]).get("sam_prompts")
        if sam:  # the seed-0 ERM student in place of SAM's image encoder
            lines += [*sam_markdown(sam), ""]
    lines += ["## Where everything is", ""]
    for kind in ("erm", "fair"):
        r = runs[kind][0]
        lines.append(f"- {kind} student (seed 0): run `{r}`, report `{r / 'eval' / 'report.md'}`, export `{r / 'export'}` "
                     f"(timm: `timm.create_model('local-dir:{r / 'export'}', pretrained=True)`)")
    lines += [f"- other seeds: `{out}/student-{{erm,{fair_tag(a.fair)}}}-s<seed>`; teachers: `{tdir}`; the teacher audit is in the "
              "seed-0 ERM report", ""]
    return "\n".join(lines)


def _selection_lines(a: Any, v: Mapping[str, Any]) -> List[str]:
    """The validation choice of the fair recipe and, where ERM was kept, what the candidate did on test."""
    from agglom.eval.selection import render_selection
    from agglom.eval.verdict import fmt_delta

    sel = v.get("selection")
    if not sel:
        return []
    L = ["## The fair recipe, chosen on validation", "", *render_selection(sel, {"fair": " ".join(a.fair)}), ""]
    c = v.get("candidate_on_test")
    if c:
        d = c["fair_vs_erm"]
        L += [f"On test, the candidate `{' '.join(a.fair)}` (not chosen) would have given: Δ worst-group AUC "
              f"{fmt_delta(d['worst'])}, Δ overall AUC {fmt_delta(d['auc'])}, " +
              ", ".join(f"Δ AUC {g} {fmt_delta(d[f'g:{g}'])}" for g in v["groups"]) +
              f"; groups worse beyond their interval: {', '.join(c['levelled_down']) or 'none'}.", ""]
    return L


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "teachers=real" in argv:  # a real foundation model as the teacher: its own pipeline and sizes
        from agglom.demo_real import main as real_main

        return real_main(argv)
    return module_main(argv, DemoArgs, run_demo, "demo", "python -m agglom.demo [teachers=real] [key=value ...]")


if __name__ == "__main__":
    sys.exit(main())
