"""`python -m benchmarks.real_teacher [n=360] [steps=600] [pool=4] [upsample=1] [out=runs/real-teacher] [quick=false]`

The real-teacher benchmark: the pipeline of ``python -m agglom.demo teachers=real`` (agglom/demo_real.py: data,
LiteMedSAM's feature cache pooled ``pool`` x ``pool``, training with recipes/litemedsam.yaml, export with LiteMedSAM's
decoder, the evaluation's fidelity, dense-probe and decoder-swap tables per site) with LiteMedSAM as the only teacher,
so that what the student learns from the real model alone is measured; ``upsample=4`` with ``pool=1`` trains the
student on the full 64x64 map (heads.spatial_upsample).

Then LiteMedSAM's encoder cost as loaded vs as the frozen teacher runs it (conv + batch norm folded, channels-last),
measured in the same process; with ``ceiling=true``, the decoder agreement a student on a pooled grid could reach at
best (LiteMedSAM's own embedding pooled and resized back). Writes ``<out>/summary.json`` and ``summary.md``.
Resumable phase by phase: a phase whose output exists is not redone, whatever the options now say (use another
``out=`` for other options; ``force=true`` starts over).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

DEFAULTS: Dict[str, Any] = {"n": 360, "steps": 600, "out": "runs/real-teacher", "quick": False,
                            "resolutions": False, "force": False, "workers": 2, "ceiling": False, "pool": 4,
                            "upsample": 1}


def parse_args(argv: Sequence[str]) -> Dict[str, Any]:
    from benchmarks.common import parse_options

    opts = parse_options(argv, DEFAULTS, __doc__ or "", "real_teacher")
    if opts["quick"]:
        opts["n"], opts["steps"] = min(opts["n"], 100), min(opts["steps"], 10)
    return opts


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
    """The pipeline (:func:`agglom.demo_real.run_real_demo`, LiteMedSAM alone), then the encoder's cost and, with
    ``ceiling=true``, the grid ceiling; all in ``<out>/summary.json``."""
    from agglom.demo_real import RealDemoArgs, run_real_demo

    out = Path(opts["out"]).resolve()
    if opts["force"] and out.exists():
        shutil.rmtree(out)
    summary = run_real_demo(RealDemoArgs(out=str(out), n=opts["n"], steps=opts["steps"], pool=opts["pool"],
                                         upsample=opts["upsample"], resolutions=opts["resolutions"],
                                         num_workers=opts["workers"], quick=opts["quick"], finetuned=False))
    summary["encoder_speed"] = encoder_speed()
    if opts["ceiling"]:
        summary["grid_ceiling"] = grid_ceiling(out / "data")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("seconds", "encoder_speed", "grid_ceiling") if k in summary}, indent=1))
    return summary


def main(argv: Sequence[str] = ()) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
