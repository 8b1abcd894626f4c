"""A Hugging Face image processor's settings (`preprocessor_config.json`) turned into a card's preprocessing contract.

Plain JSON in, card fields out: no `transformers` import, so a card can be derived from a `save_pretrained` folder
(or checked against one) cheaply. The mapping, for the processors vision encoders ship with (BitImageProcessor for
DINOv2/RAD-DINO, SiglipImageProcessor, CLIPImageProcessor, DINOv3ViTImageProcessor, ...):

- ``input_size``: ``crop_size`` when ``do_center_crop``, else ``size`` ({height, width}, or {shortest_edge: s} ->
  s x s). The student hands teachers square batches, and on a square image "resize the shortest edge to s, then
  centre-crop s x s" *is* a resize to s x s (``resize: squash``). A crop smaller than the resize (256 -> 224) would
  cut a border the teacher here keeps: that is reported in ``notes``.
- ``mean``/``std``: ``image_mean``/``image_std`` (0 and 1 when ``do_normalize`` is false), in [0, 1] units: the
  processor rescales by 1/255 first. Another ``rescale_factor`` is reported in ``notes``.
- ``interpolation``: ``resample`` as a PIL filter number (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box,
  5 hamming) -> nearest | bicubic | bilinear | bicubic | area | bilinear (lanczos and hamming have no torch kernel:
  the nearest one is used and reported).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple, Union

PROCESSOR_FILE = "preprocessor_config.json"
# PIL.Image.Resampling numbers -> the Teacher's interpolation modes (torch kernels)
RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "area", 5: "bilinear"}
_INEXACT = {1: "lanczos", 5: "hamming"}


def _size(d: Any) -> Tuple[int, int] | None:
    if isinstance(d, int):
        return (d, d)
    if not isinstance(d, Mapping):
        return None
    if "height" in d and "width" in d:
        return (int(d["height"]), int(d["width"]))
    if "shortest_edge" in d:
        return (int(d["shortest_edge"]), int(d["shortest_edge"]))
    if "longest_edge" in d:
        return (int(d["longest_edge"]), int(d["longest_edge"]))
    return None


def processor_contract(pp: Mapping[str, Any]) -> Dict[str, Any]:
    """``{"input_size": [h, w], "mean": [...], "std": [...], "interpolation": str, "resize": "squash",
    "notes": [str, ...]}`` from a processor config mapping (see the module docstring for the rules)."""
    notes: List[str] = []
    resize = _size(pp.get("size")) if pp.get("do_resize", True) else None
    crop = _size(pp.get("crop_size")) if pp.get("do_center_crop", False) else None
    size = crop or resize
    if size is None:
        raise ValueError(f"the image processor gives no output size (size={pp.get('size')!r}, "
                         f"crop_size={pp.get('crop_size')!r}); give input_size in the card")
    if crop and resize and (crop[0] < resize[0] or crop[1] < resize[1]):
        notes.append(f"the processor centre-crops {crop[0]}x{crop[1]} from a {resize[0]}x{resize[1]} resize; the "
                     f"teacher here resizes the whole image to {crop[0]}x{crop[1]} (a wider field of view)")
    if pp.get("do_normalize", True):
        mean = [float(v) for v in pp.get("image_mean", (0.5, 0.5, 0.5))]
        std = [float(v) for v in pp.get("image_std", (0.5, 0.5, 0.5))]
    else:
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    factor = float(pp.get("rescale_factor", 1 / 255)) if pp.get("do_rescale", True) else 1.0
    if abs(factor - 1 / 255) > 1e-9:
        notes.append(f"the processor rescales pixels by {factor:g}, not 1/255; mean/std are taken as given "
                     "(values > 1 are read as 0-255 units)")
    resample = int(pp.get("resample", 3))
    if resample in _INEXACT:
        notes.append(f"PIL {_INEXACT[resample]} resampling has no torch kernel; {RESAMPLE[resample]} is used")
    return {"input_size": [int(size[0]), int(size[1])], "mean": mean, "std": std,
            "interpolation": RESAMPLE.get(resample, "bicubic"), "resize": "squash", "notes": notes}


def read_processor(folder: Union[str, Path]) -> Dict[str, Any] | None:
    """The processor config of a `save_pretrained` folder, or None when it has none."""
    path = Path(folder) / PROCESSOR_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def contract_differences(card: Any, contract: Mapping[str, Any]) -> Dict[str, Tuple[Any, Any]]:
    """``{field: (card value, processor value)}`` for the preprocessing fields where a card departs from what the
    model's own image processor does (mean/std compared in [0, 1] units, to 1e-4)."""
    out: Dict[str, Tuple[Any, Any]] = {}
    for key, ours in (("mean", card.norm_mean), ("std", card.norm_std)):
        theirs = [v / 255.0 if max(contract["mean"]) > 1.0 else v for v in contract[key]]
        a = list(ours) * (3 if len(ours) == 1 else 1)
        b = list(theirs) * (3 if len(theirs) == 1 else 1)
        if len(a) != len(b) or any(abs(x - y) > 1e-4 for x, y in zip(a, b)):
            out[key] = (list(ours), list(contract[key]))
    if list(card.input_size) != list(contract["input_size"]):
        out["input_size"] = (list(card.input_size), list(contract["input_size"]))
    if card.interpolation != contract["interpolation"]:
        out["interpolation"] = (card.interpolation, contract["interpolation"])
    return out


__all__ = ["PROCESSOR_FILE", "processor_contract", "read_processor", "contract_differences"]
