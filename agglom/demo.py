"""`make demo`: the whole pipeline on the embedded default, on CPU, through the real CLI.

synthetic data -> fine-tune an ERM and a GroupDRO teacher -> agglomerate (tiny CLIP, DINOv2, SAM + both
fine-tuned teachers) at λ = 0 and λ > 0 -> evaluate both students with the teacher audit -> export -> print
where everything is, a utility/fairness table, and per-group fidelity side by side.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from agglom.cli import main as cli
from agglom.config.load import ConfigError, load_config


@dataclass
class DemoArgs:
    out: str = "runs/demo"  # everything the demo writes, except the data
    data: str = "data/synth"  # the synthetic benchmark (generated when missing)
    n: int = 3000  # synthetic images
    image_size: int = 64
    steps: int = 300  # distillation steps per student
    finetune_steps: int = 150  # steps per fine-tuned teacher
    fair_objective: str = "gap"  # the λ > 0 student's group objective
    lam: float = 1.0
    batch_size: int = 32
    num_workers: int = 2
    bootstrap: int = 200
    quick: bool = False  # a reduced run (tests): fewer samples, steps and bootstrap replicates


STUDENT = "{patch_size: 8, embed_dim: 96, depth: 4, num_heads: 3, dynamic_img_size: true}"
FT_MODEL = "{patch_size: 8, embed_dim: 64, depth: 2, num_heads: 2}"


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _run(argv: List[str]) -> None:
    code = cli(argv)
    if code:
        raise SystemExit(f"agglom demo: `agglom {' '.join(argv[:2])} ...` failed with exit code {code}")


def _fidelity_table(reports: Dict[str, Dict[str, Any]], attr: str) -> List[str]:
    """Per-group fidelity per teacher, students side by side, with the worst-group gap."""
    names = list(reports)
    fid = {n: (r.get("fidelity") or {}).get(attr, {}) for n, r in reports.items()}
    keys = sorted({k for f in fid.values() for k in f})
    if not keys:
        return []
    groups = sorted({g for f in fid.values() for k in f.values() for g in k["by_group"]})
    head = ["teacher/output"] + [f"{n}: {g}" for n in names for g in groups] + [f"{n}: gap" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in keys:
        row = [k]
        for n in names:
            for g in groups:
                v = fid[n].get(k, {}).get("by_group", {}).get(g, {}).get("value")
                row.append("n/a" if v is None else f"{v:.3f}")
        for n in names:
            v = fid[n].get(k, {}).get("gap", {}).get("value")
            row.append("n/a" if v is None else f"{v:.3f}")
        lines.append("| " + " | ".join(row) + " |")
    means = []
    for n in names:
        overall = [fid[n][k]["overall"]["value"] for k in keys if k in fid[n]]
        gaps = [fid[n][k]["gap"]["value"] for k in keys if k in fid[n] and fid[n][k]["gap"]["value"] is not None]
        means.append(f"{n}: mean fidelity {sum(overall) / len(overall):.4f}, worst per-teacher {attr} gap "
                     f"{max(gaps):.4f}, mean gap {sum(gaps) / len(gaps):.4f}")
    return lines + [""] + means


def run_demo(a: Any) -> Dict[str, Any]:
    from agglom.eval.report import summary_table

    out, data = Path(a.out), Path(a.data)
    t_all = time.perf_counter()
    timings: Dict[str, float] = {}
    n, steps, ft_steps, boot = a.n, a.steps, a.finetune_steps, a.bootstrap
    if a.quick:
        n, steps, ft_steps, boot = min(n, 400), min(steps, 12), min(ft_steps, 10), min(boot, 20)

    t = _step("1/6 synthetic bias benchmark")
    if (data / "dataset.json").is_file():
        print(f"reusing {data} (delete it to regenerate)")
        _run(["data", "info", str(data)])
    else:
        _run(["data", "synth", f"out={data}", f"n={n}", f"image_size={a.image_size}"])
    timings["data"] = time.perf_counter() - t

    common_data = [f"data.root={data}", f"data.image_size={a.image_size}", f"data.batch_size={a.batch_size}",
                   f"data.num_workers={a.num_workers}", "groups.by=site"]
    teachers_dir = out / "teachers"
    t = _step("2/6 fairness-tuned teachers: ERM and GroupDRO fine-tuning")
    for objective in ("erm", "groupdro"):
        folder = teachers_dir / f"ft-{objective}"
        if (folder / "card.yaml").is_file():
            print(f"reusing {folder}")
            continue
        _run(["finetune", "model=vit_small_patch16_224", f"model_args={FT_MODEL}", f"name=ft-{objective}",
              f"out_dir={teachers_dir}", f"objective.group={objective}", "objective.groupdro_eta=0.1",
              f"optim.steps={ft_steps}", *common_data])
    timings["finetune"] = time.perf_counter() - t

    roster = ("[{name: tiny-clip}, {name: tiny-dinov2}, {name: tiny-sam}, "
              f"{{name: {teachers_dir / 'ft-erm'}}}, {{name: {teachers_dir / 'ft-groupdro'}}}]")
    students = {"student-erm": ["objective.group=erm", "objective.lam=0"],
                f"student-{a.fair_objective}": [f"objective.group={a.fair_objective}", f"objective.lam={a.lam}"]}
    t = _step(f"3/6 agglomeration: λ = 0 (erm) and λ = {a.lam} ({a.fair_objective})")
    for name, obj in students.items():
        _run(["train", "recipe=recipes/demo.yaml", f"name={name}", f"out_dir={out}", f"teachers={roster}",
              f"student.model_args={STUDENT}", f"optim.steps={steps}", f"optim.warmup_steps={max(1, steps // 10)}",
              f"log.interval={max(1, steps // 6)}", f"log.checkpoint_interval={steps}", *common_data, *obj])
    timings["train"] = time.perf_counter() - t

    t = _step("4/6 evaluation: per-group utility and fairness, teacher audit, fidelity")
    fast = [f"eval.bootstrap={boot}"] + (["eval.label_fractions=[0.1,1.0]", "eval.seeds=1"] if a.quick else [])
    for i, name in enumerate(students):
        _run(["eval", str(out / name), f"audit={'true' if i == 0 else 'false'}", f"num_workers={a.num_workers}", *fast])
    timings["eval"] = time.perf_counter() - t

    t = _step("5/6 export: timm folder + adapter pack + model card")
    for name in students:
        _run(["export", str(out / name), f"out={out / name / 'export'}"])
    timings["export"] = time.perf_counter() - t

    _step("6/6 summary")
    reports = {n: json.loads((out / n / "eval" / "report.json").read_text()) for n in students}
    table = summary_table(list(reports.values()))
    fid = _fidelity_table(reports, "site")
    timings["total"] = time.perf_counter() - t_all
    lines = ["# agglom demo", "", f"Data: `{data}`; runs: `{out}`; total {timings['total']:.0f} s "
             f"({', '.join(f'{k} {v:.0f} s' for k, v in timings.items() if k != 'total')}).", "",
             "## Utility and fairness (linear probe, test split; gaps: lower is better)", "", "```", table, "```", "",
             "## Per-group fidelity to each teacher (cosine on normalised features, test split, by site)", "", *fid, "",
             "## Where everything is", ""]
    for name in students:
        lines += [f"- {name}: run `{out / name}`, report `{out / name / 'eval' / 'report.md'}`, "
                  f"export `{out / name / 'export'}` (timm: `timm.create_model('local-dir:{out / name / 'export'}', "
                  "pretrained=True)`)"]
    lines += [f"- fine-tuned teachers: `{teachers_dir / 'ft-erm'}`, `{teachers_dir / 'ft-groupdro'}`"]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"timings_s": timings, "students": list(students)}, indent=1))
    print(text, flush=True)
    print(f"agglom demo: done in {timings['total']:.0f} s; summary in {out / 'summary.md'}")
    return {"timings": timings, "out": str(out)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(x in ("-h", "--help") for x in argv):
        from agglom.config.load import describe

        print("python -m agglom.demo [key=value ...]\n" + describe(DemoArgs))
        return 0
    try:
        run_demo(load_config(DemoArgs, argv))
    except ConfigError as e:
        print(f"agglom demo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
