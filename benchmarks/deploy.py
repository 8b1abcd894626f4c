"""`python -m benchmarks.deploy [out=runs/bench-deploy] [quick=false] [key=value ...]`: issue 45's deployment
targets, measured on this machine's CPU (docs/guide/deploy.md, "Measured").

Phases, each reused when an earlier run into the same ``out=`` finished it (delete ``out`` to start over):

1. data: ``agglom data synth`` — the demo's 64-px synthetic benchmark (agglom/demo.py; site B 8%) at ``n`` subjects;
2. train: a student like the demo's (agglom/demo.py ``STUDENT``, recipes/demo.yaml) distilled for ``steps`` steps from
   the three tiny teacher cards, online; its ``run.json`` records the training energy (agglom/train/energy.py);
3. export: ``agglom export RUN format=onnx onnx_int8=true`` (its cost.json: student vs teachers);
4. parity: max |ONNX − PyTorch| in fp32 over every output at three input sizes, on real test images
   (agglom/export/onnx_export.py's ``compare``; sizes outside the export's vouched range are asked of the graph
   directly, which is dynamic);
5. latency: PyTorch eager (the graph's own module, agglom/export/onnx_graph.py ``OnnxStudent``: the same outputs)
   vs onnxruntime fp32 vs int8, batch 1 and 32, one thread each, in this one process, the three interleaved in every
   repeat, medians;
6. eval: ``agglom eval student.onnx``, then ``agglom eval student.int8.onnx reference=<its eval>``: per-group AUC
   change with paired 95% intervals and the levelling-down flag;
7. monitor: new draws of the same distribution (``agglom data synth`` with other seeds: i.i.d. batches) and three
   shifts, every batch ~``batch_n`` test images — a new acquisition site C in ``site_share`` of the batch (site-A
   images through another scanner: gamma 0.6, blur sigma 1 px, grain 0.08), disease prevalence 50% → 20%, and a blur
   and contrast change on every image (blur sigma 1 px, contrast × 0.75 about each image's mean) — all through one
   ``agglom monitor student.onnx alpha=0.01``: the share of shifted batches that alarm (detection) and of i.i.d.
   batches that alarm (false alarms).

Writes ``<out>/summary.json`` (every row, and the details behind them) and prints the table.
"""
from __future__ import annotations

import io
import json
import shutil
import statistics
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

DEFAULTS: Dict[str, Any] = {
    "out": "runs/bench-deploy", "quick": False, "n": 3000, "image_size": 64, "steps": 300, "num_workers": 2,
    "sizes": "32,64,128", "repeats": 50, "eval_bootstrap": 200, "batches": 10, "iid": 20, "batch_n": 200,
    "site_share": 0.2, "prevalence": 0.2, "alpha": 0.01, "permutations": 4999, "bootstrap": 500, "seed": 0,
}
#: quick=true: a toy student and sizes, seconds per phase (tests/bench/test_bench_deploy.py)
QUICK = {"n": 400, "image_size": 32, "steps": 4, "num_workers": 0, "sizes": "16,32,64", "repeats": 5,
         "eval_bootstrap": 20, "batches": 2, "iid": 2, "batch_n": 100, "permutations": 999, "bootstrap": 50}
QUICK_STUDENT = "{patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, dynamic_img_size: true}"
#: the shifts' batch-name prefixes, in the order the monitor reads them (name order)
SHIFTS = {"blur": "blur and contrast change", "newsite": "new acquisition site", "prevalence": "prevalence change"}
IID = "iid"
NEW_SITE = "C"
#: a batch alarms on these kinds (the monitor's defaults); a shift counts as detected when >= this share alarms
ALARM_KINDS = ("drift", "score", "prevalence", "auc")
DETECTION_SHARE = 0.8


def options(argv: Sequence[str]) -> Dict[str, Any]:
    """``key=value`` over :data:`DEFAULTS`; ``quick=true`` caps the sizes at :data:`QUICK` (explicit keys win)."""
    from benchmarks.common import parse_options

    o = parse_options(argv, DEFAULTS, __doc__ or "", "benchmarks.deploy")
    if o["quick"]:
        given = {a.partition("=")[0] for a in argv}
        o.update({k: v for k, v in QUICK.items() if k not in given})
    o["size_list"] = [int(s) for s in str(o["sizes"]).split(",") if s.strip()]
    return o


def _cli(argv: List[str], ok: Sequence[int] = (0,)) -> int:
    from agglom.cli import main as cli

    code = cli(argv)
    if code not in ok:
        raise SystemExit(f"benchmarks.deploy: `agglom {' '.join(argv[:2])} ...` failed with exit code {code}")
    return code


def _phase(out: Path, name: str, fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    """``fn()``'s result, kept in ``<out>/phases/<name>.json``: a finished phase is read back, not redone."""
    path = out / "phases" / f"{name}.json"
    if path.is_file():
        print(f"=== {name}: reusing {path}", flush=True)
        return json.loads(path.read_text())
    print(f"=== {name}", flush=True)
    t = time.perf_counter()
    result = fn()
    result["seconds"] = time.perf_counter() - t
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float))
    return result


# ------------------------------------------------------------------ 1-3: data, student, export
def make_data(o: Mapping[str, Any], data: Path) -> Dict[str, Any]:
    if not (data / "dataset.json").is_file():
        _cli(["data", "synth", f"out={data}", f"n={o['n']}", f"image_size={o['image_size']}", f"seed={o['seed']}",
              "shard_size=500", "force=true"])
    return {"root": str(data), "sheet": json.loads((data / "dataset.json").read_text())["params"]}


def train_student(o: Mapping[str, Any], data: Path, runs: Path) -> Dict[str, Any]:
    from agglom.demo_steps import STUDENT, TINY, demo_recipe

    run, steps = runs / "student", int(o["steps"])
    done = (run / "run.json").is_file() and json.loads((run / "run.json").read_text()).get("step") == steps
    if not done:
        args = ["train", f"recipe={demo_recipe()}", "name=student", f"out_dir={runs}", f"data.root={data}",
                f"data.image_size={o['image_size']}", f"data.num_workers={o['num_workers']}", "groups.by=site",
                "teachers=[" + ", ".join(f"{{name: {t}}}" for t in TINY) + "]", f"seed={o['seed']}",
                f"data.seed={o['seed']}", f"student.model_args={QUICK_STUDENT if o['quick'] else STUDENT}",
                f"optim.steps={steps}", f"optim.warmup_steps={max(1, steps // 10)}",
                f"log.interval={max(1, steps // 4)}", f"log.checkpoint_interval={steps}", "log.progress=off"]
        if o["quick"]:
            args += ["data.batch_size=16", "data.epoch_samples=128", "heads.stats_samples=32"]
        _cli(args)
    return {"run": str(run), "run_json": json.loads((run / "run.json").read_text())}


def export_student(run: Path) -> Dict[str, Any]:
    export = run / "export"
    if not (export / "onnx.json").is_file() or "int8" not in json.loads((export / "onnx.json").read_text()):
        _cli(["export", str(run), "format=onnx", "onnx_int8=true", "force=true"])
    return {"export": str(export), "onnx": json.loads((export / "onnx.json").read_text()),
            "cost": json.loads((export / "cost.json").read_text())}


# ------------------------------------------------------------------ 4-5: parity and latency
def parity(run: Path, export: Path, sizes: Sequence[int]) -> Dict[str, Any]:
    """Max |onnxruntime − PyTorch| (fp32) per size and output, on the run's real test images (and a batch of one)."""
    from agglom.export.onnx_export import FILES, check_batches, compare, session_for
    from agglom.runs import load_run_model, run_config

    model = load_run_model(run).eval().cpu()
    result = compare(model, session_for(export / FILES["fp32"]), check_batches(run_config(run)), list(sizes))
    info = json.loads((export / "onnx.json").read_text())["input"]
    return {**result, "supported_range": info["supported_range"], "range_source": info["range_source"]}


def latency(run: Path, export: Path, size: int, repeats: int, threads: int = 1) -> Dict[str, Any]:
    """Median seconds per call of PyTorch eager, onnxruntime fp32 and int8 at batch 1 and 32, ``threads`` thread(s),
    the three interleaved in each repeat (a load swing hits all three)."""
    import torch

    from agglom.export.cost import threads as torch_threads
    from agglom.export.onnx_export import FILES, session_for
    from agglom.export.onnx_graph import OnnxStudent
    from agglom.runs import load_run_model

    model = load_run_model(run).eval().cpu()
    module = OnnxStudent(model).eval()
    sessions = {k: session_for(export / FILES[k], threads) for k in ("fp32", "int8")}
    c = model.student.patch_embed.proj.in_channels
    out: Dict[str, Any] = {"size": size, "threads": threads, "batches": {}}
    with torch_threads(threads), torch.no_grad():
        for batch, reps in ((1, repeats), (32, max(5, repeats // 5))):
            x = torch.randn(batch, c, size, size, generator=torch.Generator().manual_seed(0))
            feed = {"image": x.numpy()}
            calls: Dict[str, Callable[[Any], Any]] = {
                "pytorch_fp32": lambda xi: module(xi),
                "onnx_fp32": lambda xi, feed=feed: sessions["fp32"].run(None, feed),
                "onnx_int8": lambda xi, feed=feed: sessions["int8"].run(None, feed)}
            times: Dict[str, List[float]] = {k: [] for k in calls}
            for i in range(reps + 3):  # three warm-up rounds
                for name, call in calls.items():
                    xi = x.clone()
                    t = time.perf_counter()
                    call(xi)
                    if i >= 3:
                        times[name].append(time.perf_counter() - t)
            med = {k: statistics.median(v) for k, v in times.items()}
            out["batches"][str(batch)] = {"repeats": reps, "median_s": med,
                                          "speedup_vs_pytorch": {k: med["pytorch_fp32"] / v for k, v in med.items()}}
    return out


# ------------------------------------------------------------------ 6: int8 vs fp32, per group
def evaluate(export: Path, data: Path, boot: int) -> Dict[str, Any]:
    from agglom.eval.onnx_encoder import default_out

    ev = [f"data_root={data}", "eval.features=adapters", f"eval.bootstrap={boot}", "eval.label_fractions=[]",
          "num_workers=0"]
    fp32, int8 = export / "student.onnx", export / "student.int8.onnx"
    if not (default_out(fp32) / "report.json").is_file():
        _cli(["eval", str(fp32), *ev])
    if not (default_out(int8) / "report.json").is_file():
        _cli(["eval", str(int8), *ev, f"reference={default_out(fp32)}"])
    comp = json.loads((default_out(int8) / "report.json").read_text())["comparison"]
    per: Dict[str, Any] = {}
    for attr, r in comp["attributes"].items():
        if "groups" not in r:  # a multi-label comparison: not the synthetic benchmark's
            continue
        per[attr] = {"overall_auc": r["overall_auc"], "worst_group_auc": r["worst_group_auc"], "auc_gap": r["auc_gap"],
                     "groups": {g: {k: d.get(k) for k in ("reference", "new", "delta", "ci", "n")}
                                for g, d in r["groups"].items()},
                     "levelled_down": r["levelled_down"]}
    return {"attributes": per, "levels_down": comp["levels_down"], "levelled_down": comp["levelled_down"],
            "report": str(default_out(int8) / "report.md")}


# ------------------------------------------------------------------ 7: batches and the monitor
def _draw(o: Mapping[str, Any], seed: int, dest: Path, **over: Any) -> Path:
    """~``batch_n`` new test images of the benchmark's distribution (``over``: other synth parameters) in ``dest``."""
    from agglom.data.synth import SynthParams, write_synth

    tmp = dest.with_name(dest.name + ".draw")
    shutil.rmtree(tmp, ignore_errors=True)
    write_synth(str(tmp), SynthParams(n=2 * int(o["batch_n"]), image_size=int(o["image_size"]), seed=seed, **over),
                val_frac=0.0, test_frac=0.5, shard_size=10_000, force=True)
    shutil.rmtree(dest, ignore_errors=True)
    shutil.move(str(tmp / "test"), str(dest))
    shutil.rmtree(tmp)
    return dest


def _gamma_scanner(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Site C's acquisition: another response curve (gamma 0.6), blur (sigma 1 px), grain (sd 0.08)."""
    from scipy import ndimage

    x = ndimage.gaussian_filter((img / 255.0) ** 0.6, 1.0) + 0.08 * rng.standard_normal(img.shape)
    return np.clip(x, 0, 1)


def _blur_contrast(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A reconstruction change at every site: blur (sigma 1 px) and contrast × 0.75 about the image's mean."""
    from scipy import ndimage

    x = ndimage.gaussian_filter(img / 255.0, 1.0)
    return np.clip(x.mean() + 0.75 * (x - x.mean()), 0, 1)


def rewrite(folder: Path, change: Callable[[np.ndarray, np.random.Generator], np.ndarray], seed: int,
            pick: Optional[Callable[[List[Dict[str, Any]]], List[int]]] = None, site: Optional[str] = None) -> int:
    """Apply ``change`` to the images of ``folder``'s shards (those ``pick`` chooses from the samples' json, all by
    default), their attribute ``site`` set to ``site`` when given; returns how many changed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    changed = 0
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        stems = sorted({n.split(".", 1)[0] for n in members})
        metas = [json.loads(members[f"{s}.json"]) for s in stems]
        chosen = set(pick(metas) if pick else range(len(stems)))
        for i in sorted(chosen):
            s = stems[i]
            img = np.asarray(Image.open(io.BytesIO(members[f"{s}.png"])).convert("L"), dtype=np.float64)
            buf = io.BytesIO()
            Image.fromarray(np.round(change(img, rng) * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
            members[f"{s}.png"] = buf.getvalue()
            if site is not None:
                metas[i]["attrs"]["site"] = site
                members[f"{s}.json"] = json.dumps(metas[i]).encode()
            changed += 1
        with tarfile.open(shard, "w") as tar:
            for name, body in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return changed


def make_batches(o: Mapping[str, Any], incoming: Path) -> Dict[str, Any]:
    """The i.i.d. batches and the shifted ones under ``incoming/<kind>-<i>``, each from its own synth seed."""
    made: Dict[str, Any] = {}
    base = 10_000 + 1000 * int(o["seed"])
    for i in range(int(o["iid"])):
        made[f"{IID}-{i:02d}"] = {"seed": base + i}
        _draw(o, base + i, incoming / f"{IID}-{i:02d}")
    for i in range(int(o["batches"])):
        seed = base + 100 + i
        d = _draw(o, seed, incoming / f"newsite-{i:02d}")
        k = int(round(float(o["site_share"]) * _count(d)))

        def pick(metas: List[Dict[str, Any]], k: int = k, seed: int = seed) -> List[int]:
            a = [j for j, m in enumerate(metas) if m["attrs"]["site"] == "A"]
            return sorted(np.random.default_rng(seed).choice(a, size=min(k, len(a)), replace=False).tolist())

        made[f"newsite-{i:02d}"] = {"seed": seed, "site_C": rewrite(d, _gamma_scanner, seed, pick, NEW_SITE)}
        seed = base + 200 + i
        _draw(o, seed, incoming / f"prevalence-{i:02d}", p_disease=float(o["prevalence"]))
        made[f"prevalence-{i:02d}"] = {"seed": seed, "p_disease": float(o["prevalence"])}
        seed = base + 300 + i
        made[f"blur-{i:02d}"] = {"seed": seed, "changed": rewrite(_draw(o, seed, incoming / f"blur-{i:02d}"),
                                                                  _blur_contrast, seed)}
    for name in made:
        made[name]["n"] = _count(incoming / name)
    return made


def _count(folder: Path) -> int:
    n = 0
    for shard in folder.glob("*.tar"):
        with tarfile.open(shard) as tar:
            n += sum(1 for m in tar.getmembers() if m.name.endswith(".png") and ".mask" not in m.name)
    return n


def monitor(o: Mapping[str, Any], export: Path, data: Path, incoming: Path, out: Path) -> Dict[str, Any]:
    if not (out / "report.json").is_file():
        _cli(["monitor", str(export / "student.onnx"), f"reference={data}", f"incoming={incoming}", f"out={out}",
              f"alpha={o['alpha']}", f"permutations={o['permutations']}", f"bootstrap={o['bootstrap']}",
              f"seed={o['seed']}"], ok=(0, 3))
    return detection(json.loads((out / "report.json").read_text()))


def detection(report: Mapping[str, Any]) -> Dict[str, Any]:
    """Per kind of batch: the share that alarmed (on :data:`ALARM_KINDS`), by which test, and the overall p-values."""
    kinds: Dict[str, Dict[str, Any]] = {}
    for b in report["batches"]:
        kind = b["batch"].rsplit("-", 1)[0]
        alarmed = sorted({f["kind"] for f in b["findings"] if f["alarm"] and f["kind"] in ALARM_KINDS})
        k = kinds.setdefault(kind, {"batches": 0, "alarmed": 0, "by_kind": {}, "drift_p_overall": [],
                                    "score_p_overall": [], "overall_p_below_alpha": 0, "calibration_noted": 0,
                                    "new_group_named": 0, "per_batch": {}})
        k["batches"] += 1
        k["alarmed"] += int(bool(alarmed))
        ps = [p for p in (b["drift"]["overall"].get("p"), (b["score"] or {}).get("overall", {}).get("p")) if p is not None]
        k["overall_p_below_alpha"] += int(bool(ps) and min(ps) < report["options"]["alpha"])
        k["calibration_noted"] += int(any(f["kind"] == "calibration" and f["group"] == "overall" for f in b["findings"]))
        for a in alarmed:
            k["by_kind"][a] = k["by_kind"].get(a, 0) + 1
        k["drift_p_overall"].append(b["drift"]["overall"].get("p"))
        k["score_p_overall"].append((b["score"] or {}).get("overall", {}).get("p"))
        k["new_group_named"] += int(any(r["new_groups"] for r in b["proportions"].values()))
        k["per_batch"][b["batch"]] = {"n": b["n"], "alarmed_on": alarmed,
                                      "groups": sorted({f["group"] for f in b["findings"] if f["alarm"]})}
    for k in kinds.values():
        k["rate"] = k["alarmed"] / k["batches"]
    return {"kinds": kinds, "alpha": report["options"]["alpha"], "permutations": report["options"]["permutations"]}


def example_plot(report_path: Path, dest: Path) -> str:
    """monitor.png of the first batch of each kind (the README's figure, docs/img/monitor-shifts.png), from the full
    run's report, in 64 colours (a third of the size)."""
    from PIL import Image

    from agglom.monitor.report import plot

    report = json.loads(report_path.read_text())
    firsts: Dict[str, Any] = {}
    for b in report["batches"]:
        firsts.setdefault(b["batch"].rsplit("-", 1)[0], b)
    order = [IID, "newsite", "prevalence", "blur"]
    report["batches"] = [firsts[k] for k in order if k in firsts]
    path = plot(report, dest)
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)
    return str(path)


# ------------------------------------------------------------------ 8: cost
def demo_roster_flops(size: int) -> Dict[str, float]:
    """FLOPs per image at ``size`` px of the demo's two fine-tuned teachers' encoders (agglom/demo.py ``FT_MODEL``),
    built on the meta device, so the demo's five-teacher roster can be counted without running the demo."""
    import timm
    import torch
    import yaml

    from agglom.demo_steps import FT_MODEL, FT_TEACHERS
    from agglom.export.cost import count_flops

    with torch.device("meta"):
        enc = timm.create_model("vit_small_patch16_224", img_size=size, num_classes=0, **yaml.safe_load(FT_MODEL))
        flops = count_flops(enc.forward_features, torch.empty(1, 3, size, size))
    return {name: flops for name in FT_TEACHERS}


def cost_summary(cost: Mapping[str, Any], size: int) -> Dict[str, Any]:
    student = float(cost["student"]["flops"])
    teachers = {t["name"]: float(t["flops"]) for t in cost["teachers"] if "flops" in t}
    demo = {**teachers, **demo_roster_flops(size)}
    return {"student_flops": student, "teacher_flops": teachers, "ratio": student / sum(teachers.values()),
            "demo_roster_flops": demo, "demo_roster_ratio": student / sum(demo.values()),
            "latency_s": cost["student"]["latency_s"]}


# ------------------------------------------------------------------ the table
def _ci(ci: Optional[Sequence[float]]) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "[no interval]"


def rows_of(o: Mapping[str, Any], r: Mapping[str, Any]) -> Any:
    from agglom.export.onnx_export import TOLERANCE
    from benchmarks.common import Rows

    rows = Rows()
    par = r["parity"]
    for size in par["sizes"]:
        d = par["per_size"][str(size)]
        rows.add("onnx", f"max |ONNX - PyTorch| fp32 at {size} px", d, unit="", target=f"<= {TOLERANCE:g}",
                 met=d <= TOLERANCE)
    for batch, lat in r["latency"]["batches"].items():
        med, sp = lat["median_s"], lat["speedup_vs_pytorch"]
        rows.add("latency", f"PyTorch fp32, batch {batch}", med["pytorch_fp32"] * 1e3, unit="ms")
        rows.add("latency", f"ONNX fp32, batch {batch}", med["onnx_fp32"] * 1e3, med["pytorch_fp32"] * 1e3, unit="ms",
                 ratio=sp["onnx_fp32"], target="speed-up (ratio)")
        rows.add("latency", f"ONNX int8, batch {batch}", med["onnx_int8"] * 1e3, med["pytorch_fp32"] * 1e3, unit="ms",
                 ratio=sp["onnx_int8"], target="speed-up >= 2", met=sp["onnx_int8"] >= 2)
    ev = r["eval"]
    for attr, a in ev["attributes"].items():
        for g, d in [("overall", a["overall_auc"])] * (attr == next(iter(ev["attributes"]))) + list(a["groups"].items()):
            ci = d.get("ci")
            flag = " worse beyond CI" if g in a["levelled_down"] else ""
            name = g if g == "overall" else f"{attr}={g}"
            rows.add("int8", f"Δ AUC {name} (int8 - fp32) {_ci(ci)}{flag}", d["delta"], target="reported with 95% CI",
                     ci=ci, auc_fp32=d["reference"], auc_int8=d["new"], levelled_down=bool(flag))
    rows.add("int8", "groups levelled down (AUC worse beyond CI)", float(sum(len(v) for v in ev["levelled_down"].values())),
             unit="groups", target="reported", groups=ev["levelled_down"])
    det, alpha = r["monitor"]["kinds"], float(o["alpha"])
    for kind, what in [*SHIFTS.items(), (IID, "i.i.d. (false alarms)")]:
        if kind not in det:
            continue
        k = det[kind]
        target, met = ((f">= {DETECTION_SHARE:g} of batches", k["rate"] >= DETECTION_SHARE) if kind != IID
                       else ("<= 0.05", k["rate"] <= 0.05))
        rows.add("monitor", f"{what}: {k['alarmed']}/{k['batches']} batches alarm (family-wise alpha {alpha:g})",
                 k["rate"], target=target, met=met, by_kind=k["by_kind"])
        rows.add("monitor", f"{what}: overall drift or score p < {alpha:g} in {k['overall_p_below_alpha']}/"
                 f"{k['batches']}; overall ECE up beyond CI (a note) in {k['calibration_noted']}/{k['batches']}",
                 k["overall_p_below_alpha"] / k["batches"], target="reported")
    c = r["cost"]
    rows.add("cost", "student / teachers FLOPs (3 tiny teachers)", c["ratio"], unit="", target="<= 1/3",
             met=c["ratio"] <= 1 / 3)
    rows.add("cost", "student / teachers FLOPs (demo's 5 teachers)", c["demo_roster_ratio"], unit="",
             target="<= 1/3", met=c["demo_roster_ratio"] <= 1 / 3)
    e = r["train"]["run_json"].get("energy") or {}
    if e:
        rows.add("energy", f"training energy ({e['method']})", e["kwh"], unit="kWh", target="recorded in run.json",
                 met=True, seconds=e["seconds"])
        rows.add("energy", f"training emissions at {e['grid_gco2_per_kwh']:g} gCO2e/kWh", e["gco2e"], unit="gCO2e",
                 target="recorded in run.json", met=True)
    return rows


def run(o: Mapping[str, Any]) -> Dict[str, Any]:
    out = Path(o["out"])
    out.mkdir(parents=True, exist_ok=True)
    data, t0 = out / "data", time.perf_counter()
    r: Dict[str, Any] = {"options": dict(o)}
    r["data"] = _phase(out, "data", lambda: make_data(o, data))
    r["train"] = _phase(out, "train", lambda: train_student(o, data, out / "runs"))
    run_dir = Path(r["train"]["run"])
    r["export"] = _phase(out, "export", lambda: export_student(run_dir))
    export = Path(r["export"]["export"])
    r["parity"] = _phase(out, "parity", lambda: parity(run_dir, export, o["size_list"]))
    r["latency"] = _phase(out, "latency", lambda: latency(run_dir, export, int(o["image_size"]), int(o["repeats"])))
    r["eval"] = _phase(out, "eval", lambda: evaluate(export, data, int(o["eval_bootstrap"])))
    r["batches"] = _phase(out, "batches", lambda: make_batches(o, out / "incoming"))
    r["monitor"] = _phase(out, "monitor", lambda: monitor(o, export, data, out / "incoming", out / "monitor"))
    r["monitor"]["example_plot"] = example_plot(out / "monitor" / "report.json", out / "monitor-example.png")
    r["cost"] = _phase(out, "cost", lambda: cost_summary(r["export"]["cost"], int(o["image_size"])))
    rows = rows_of(o, r)
    summary = {"schema": "agglom.bench-deploy/1", "options": dict(o), "rows": rows.rows,
               "seconds": time.perf_counter() - t0,
               "details": {k: r[k] for k in ("parity", "latency", "eval", "monitor", "cost")},
               "energy": r["train"]["run_json"].get("energy"), "onnx": r["export"]["onnx"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    print(rows.table(), flush=True)
    print(f"benchmarks.deploy: {out / 'summary.json'}", flush=True)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    run(options(list(sys.argv[1:] if argv is None else argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
