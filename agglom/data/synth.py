"""The synthetic bias benchmark (SimBA-style, Stanley et al.): numpy/scipy only, vectorised, seconds on a CPU.

Each subject is a smooth 2D "organ" template (an ellipse with two darker lobes and a soft edge) seen through a
subject-level smooth random displacement field, with texture. Attributes and effects:

- ``label`` (disease, binary): a local bright blob in the upper-right lobe region that moves with the anatomy.
  Its ground-truth segmentation is written as each sample's ``mask.png`` (0/255; read as 0/1): the blob at half
  its peak or more, inside the organ; all background for a healthy subject. Drawing it consumes no randomness, so
  images, labels and splits are the same as without masks.
- ``shortcut`` ("0"/"1"): the *bias effect* — an intensity/contrast shift inside the organ (``bias=intensity``),
  a local bulge of the outline (``bias=morphology``) or both — whose prevalence differs by class:
  P(shortcut=1 | disease) = ``shortcut_p_disease``, P(shortcut=1 | healthy) = ``shortcut_p_healthy``.
- ``site`` ("A"/"B"): a small site B (``site_frac``) acquired differently: inverted polarity, blur and grain
  (a representation gap).
- ``sex`` ("F"/"M"): a small organ-size effect; ``age`` (int): a small intensity/texture effect.

Counts are exact (disease prevalence, shortcut prevalence per class, site B and sex fractions are realised by
permutation, not by coin flips), and splits are stratified over label x shortcut x site. The matched twin
(``twin=true`` -> ``<out>/twin``) re-renders the same subjects with identical random draws and no bias effect:
images of subjects without the shortcut are byte-identical, those with it differ.
"""
from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
from scipy import ndimage

UNLABELED_SPLIT = "unlabeled"  # the label-free split of `agglom data synth unlabeled=N`
UNLABELED_SALT = 7  # its random stream (see _stream)
NO_LABEL = -1  # agglom.data.pipeline.NO_LABEL (not imported: this module stays torch-free)
CHUNK = 512  # subjects rendered per vectorised block (fixed: part of the random stream's definition)
LESION_LEVEL = 0.5  # the lesion mask: where the disease blob is at least this fraction of its peak (half maximum)
# Bounds on what one `agglom data synth` may ask for (SynthParams.validate, memory_needed): every image and mask is
# rendered before any is written (1 byte a pixel each, twice with the twin) and a block of CHUNK images is rendered
# in float32 with ~20 arrays alive (~80 bytes a pixel, measured): without bounds, image_size=100000 asks numpy for
# hundreds of GiB and n=2e9 runs for days without a word.
MAX_N = 10_000_000
MAX_IMAGE_SIZE = 1024
MAX_MEMORY = 16 << 30
RENDER_BYTES_PER_PIXEL = 80


@dataclass
class SynthParams:
    n: int = 9000  # with the default fractions: 2250 train, 2250 val, 4500 test (360 of the rare site B)
    image_size: int = 64
    seed: int = 0
    p_disease: float = 0.5
    disease_strength: float = 0.3
    bias: str = "intensity"  # shortcut bias effect: intensity | morphology | both
    bias_strength: float = 0.15
    shortcut_p_disease: float = 0.7  # P(shortcut=1 | disease)
    shortcut_p_healthy: float = 0.3  # P(shortcut=1 | healthy)
    site_frac: float = 0.08  # fraction of the rare site "B" (inverted polarity + grain + blur)
    site_blur: float = 0.8
    site_grain: float = 0.06
    sex_effect: float = 0.04
    age_min: int = 20
    age_max: int = 90
    deform: float = 0.08
    texture: float = 0.04

    @classmethod
    def from_config(cls, cfg: Any) -> "SynthParams":
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)})

    def validate(self) -> None:
        """ValueError naming the first parameter out of its range, the range and why."""
        if not 1 <= self.n <= MAX_N:
            raise ValueError(f"n={self.n}: give 1..{MAX_N:,} subjects (every image is rendered in memory before it "
                             "is written, and writing runs at a few thousand images a second)")
        if not 8 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"image_size={self.image_size}: give 8..{MAX_IMAGE_SIZE} pixels (the side of each square "
                             "image; below 8 the anatomy does not fit, above it one block of images needs more "
                             "memory than a workstation has)")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed}: give a seed >= 0 (numpy's generators take no negative seed)")
        if self.bias not in ("intensity", "morphology", "both"):
            raise ValueError(f"bias must be intensity | morphology | both, got {self.bias!r}")
        for name in ("p_disease", "shortcut_p_disease", "shortcut_p_healthy", "site_frac"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.age_max <= self.age_min:
            raise ValueError(f"age_max must exceed age_min, got {self.age_min}..{self.age_max}")


def memory_needed(p: SynthParams, unlabeled: int = 0, twin: bool = False) -> int:
    """Bytes `agglom data synth` holds at its peak: all images and masks of a variant (and the previous variant's
    while the twin renders) plus one block being rendered."""
    pixels = p.image_size * p.image_size
    held = (p.n * 2 + unlabeled) * pixels * (2 if twin else 1)
    return held + RENDER_BYTES_PER_PIXEL * min(max(p.n, unlabeled), CHUNK) * pixels


def check_size(p: SynthParams, unlabeled: int = 0, twin: bool = False) -> None:
    """ValueError when ``unlabeled`` is out of range or the write would need more than :data:`MAX_MEMORY`."""
    if not 0 <= unlabeled <= MAX_N:
        raise ValueError(f"unlabeled={unlabeled}: give 0..{MAX_N:,} extra subjects without labels (rendered in "
                         "memory like the others)")
    need = memory_needed(p, unlabeled, twin)
    if need > MAX_MEMORY:
        raise ValueError(f"n={p.n} (+ unlabeled={unlabeled}) at image_size={p.image_size}"
                         + (" with twin=true" if twin else "") + f" needs ~{need / (1 << 30):.0f} GiB of memory "
                         f"(every image and mask is rendered before it is written); stay under "
                         f"{MAX_MEMORY >> 30} GiB: fewer subjects or smaller images")


def _exact_flags(rng: np.random.Generator, n: int, frac: float) -> np.ndarray:
    flags = np.zeros(n, dtype=bool)
    flags[: int(round(n * frac))] = True
    rng.shuffle(flags)
    return flags


def _stream(p: SynthParams, salt: int, *parts: int) -> np.random.Generator:
    """The generator of one random stream: ``salt`` 0 is the benchmark's own subjects, another salt an independent
    population from the same distribution (the unlabeled split), so adding one changes no benchmark image."""
    return np.random.default_rng([p.seed, *parts] + ([salt] if salt else []))


def subjects(p: SynthParams, salt: int = 0) -> Dict[str, np.ndarray]:
    """Per-subject scalars: label, shortcut, site B, sex, age, shape and lesion jitter (exact counts)."""
    rng = _stream(p, salt, 1)
    n = p.n
    label = _exact_flags(rng, n, p.p_disease)
    shortcut = np.zeros(n, dtype=bool)
    for cls, prob in ((True, p.shortcut_p_disease), (False, p.shortcut_p_healthy)):
        idx = np.flatnonzero(label == cls)
        shortcut[idx] = _exact_flags(rng, len(idx), prob)
    site_b = _exact_flags(rng, n, p.site_frac)
    male = _exact_flags(rng, n, 0.5)
    age = rng.integers(p.age_min, p.age_max, size=n)
    return {
        "label": label, "shortcut": shortcut, "site_b": site_b, "male": male, "age": age,
        "scale": (1.0 + 0.05 * rng.standard_normal((n, 2))).astype(np.float32),
        "rot": (0.08 * rng.standard_normal(n)).astype(np.float32),
        "lesion_xy": (0.05 * rng.standard_normal((n, 2))).astype(np.float32),
        "lesion_r": np.clip(0.14 * (1 + 0.2 * rng.standard_normal(n)), 0.07, 0.25).astype(np.float32),
        "level": (0.04 * rng.standard_normal(n)).astype(np.float32),
    }


def _upsampler(g: int, size: int) -> np.ndarray:
    """[size, g] cubic B-spline weights: a smooth separable upsampling of a g x g control grid."""
    t = np.linspace(0.0, g - 1.0, size)[:, None] - np.arange(g)[None, :]
    a = np.abs(t)
    w = np.where(a < 1, 2 / 3 - a ** 2 + a ** 3 / 2, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _render_chunk(p: SynthParams, s: Dict[str, np.ndarray], lo: int, hi: int, with_bias: bool,
                  lesions: Optional[np.ndarray] = None, salt: int = 0) -> np.ndarray:
    """Render subjects [lo, hi) -> uint8 [m, S, S]. All randomness comes from rng(seed, 2, lo). ``lesions`` (uint8
    [m, S, S], filled in place when given): the ground-truth lesion mask, computed from the same geometry without
    drawing anything, so images are the same with or without it."""
    S = p.image_size
    m = hi - lo
    rng = _stream(p, salt, 2, lo)
    g = 5
    coarse = rng.standard_normal((m, 2, g, g)).astype(np.float32) * p.deform
    tex = rng.standard_normal((m, S, S)).astype(np.float32)
    grain = rng.standard_normal((m, S, S)).astype(np.float32)
    up = _upsampler(g, S)
    disp = np.einsum("ik,nckl,jl->ncij", up, coarse, up, optimize=True)

    lin = np.linspace(-1.0, 1.0, S, dtype=np.float32)
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    x = xx[None] + disp[:, 0]
    y = yy[None] + disp[:, 1]
    sl = slice(lo, hi)
    shortcut = s["shortcut"][sl] & with_bias
    if p.bias in ("morphology", "both"):  # local bulge of the outline: push sampling points towards a centre
        cx, cy, rad = -0.45, 0.55, 0.35
        dx, dy = x - cx, y - cy
        w = np.exp(-(dx ** 2 + dy ** 2) / (2 * rad ** 2)) * (p.bias_strength * 2.0)
        f = shortcut[:, None, None].astype(np.float32) * w
        x = x - f * dx
        y = y - f * dy
    # subject pose: rotation + anisotropic scale (+ sex effect on size)
    c, sn = np.cos(s["rot"][sl])[:, None, None], np.sin(s["rot"][sl])[:, None, None]
    size = (1.0 + p.sex_effect * s["male"][sl].astype(np.float32))[:, None, None]
    xr = (c * x + sn * y) / (0.62 * s["scale"][sl, 0][:, None, None] * size)
    yr = (-sn * x + c * y) / (0.78 * s["scale"][sl, 1][:, None, None] * size)
    r = np.sqrt(xr ** 2 + yr ** 2)
    mask = 1.0 / (1.0 + np.exp(-(1.0 - r) / 0.04))
    lobes = (np.exp(-((xr - 0.42) ** 2 + (yr + 0.1) ** 2) / 0.08) + np.exp(-((xr + 0.42) ** 2 + (yr + 0.1) ** 2) / 0.08))
    age = ((s["age"][sl].astype(np.float32) - 55.0) / 35.0)[:, None, None]
    organ = 0.62 + 0.12 * yr - 0.22 * lobes + s["level"][sl][:, None, None] - 0.03 * age
    tex = ndimage.gaussian_filter(tex, sigma=(0, 1.2, 1.2))
    tex /= tex.std() + 1e-6
    organ = organ + p.texture * (1.0 + 0.3 * age) * tex
    # disease: a bright blob in the upper-right lobe region, in anatomical coordinates
    lx = 0.42 + s["lesion_xy"][sl, 0][:, None, None]
    ly = -0.35 + s["lesion_xy"][sl, 1][:, None, None]
    lr = s["lesion_r"][sl][:, None, None]
    blob = np.exp(-((xr - lx) ** 2 + (yr - ly) ** 2) / (2 * lr ** 2))
    organ = organ + p.disease_strength * s["label"][sl][:, None, None] * blob
    if lesions is not None:  # the lesion: where the disease effect is at least half its peak, inside the organ
        lesions[...] = (s["label"][sl][:, None, None] & (blob >= LESION_LEVEL) & (mask >= 0.5)).astype(np.uint8)
    if p.bias in ("intensity", "both"):  # intensity + contrast shift inside the organ
        f = shortcut[:, None, None].astype(np.float32)
        organ = organ + f * (p.bias_strength * 0.5 + p.bias_strength * (organ - 0.5))
    img = 0.06 + mask * (organ - 0.06)
    img = np.clip(img, 0.0, 1.0)
    _site_b_acquisition(p, img, s["site_b"][sl], grain)
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _site_b_acquisition(p: SynthParams, img: np.ndarray, site_b: np.ndarray, grain: np.ndarray) -> None:
    """Site B's scanner, in place on its images: inverted polarity, blur, grain."""
    if site_b.any():
        b = img[site_b]
        b = 1.0 - b
        b = ndimage.gaussian_filter(b, sigma=(0, p.site_blur, p.site_blur)) if p.site_blur > 0 else b
        b = b + p.site_grain * grain[site_b]
        img[site_b] = b


def render(p: SynthParams, s: Optional[Dict[str, np.ndarray]] = None, with_bias: bool = True,
           lesions: bool = False, salt: int = 0) -> Any:
    """All images, uint8 [n, S, S]; ``with_bias=False`` renders the no-bias twin of the same subjects.
    ``lesions=True`` returns ``(images, masks)``, masks uint8 [n, S, S] in {0, 1}: the disease lesion of each
    diseased subject (all background for a healthy one), in the image's geometry (the morphology bias moves it
    with the anatomy; site B's acquisition changes intensities only)."""
    p.validate()
    s = subjects(p, salt) if s is None else s
    out = np.empty((p.n, p.image_size, p.image_size), dtype=np.uint8)
    masks = np.zeros_like(out) if lesions else None
    for lo in range(0, p.n, CHUNK):
        hi = min(p.n, lo + CHUNK)
        out[lo:hi] = _render_chunk(p, s, lo, hi, with_bias, None if masks is None else masks[lo:hi], salt)
    return (out, masks) if lesions else out


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def attrs_of(s: Dict[str, np.ndarray], i: int) -> Dict[str, Any]:
    return {"site": "B" if s["site_b"][i] else "A", "sex": "M" if s["male"][i] else "F", "age": int(s["age"][i]),
            "shortcut": "1" if s["shortcut"][i] else "0"}


def split_design(p: SynthParams, val_frac: float, test_frac: float, unlabeled: int = 0) -> str:
    """How the splits were drawn, for the datasheet."""
    train = 1.0 - val_frac - test_frac
    rare = int(round(p.n * test_frac * p.site_frac))
    text = (f"every split stratified by label x shortcut x site (natural group proportions in each: site B "
            f"{p.site_frac:.0%}); fractions train {train:.2f} / val {val_frac:.2f} / test {test_frac:.2f}, so the "
            f"test split holds ~{rare} samples of the rare site B: enough to tell a group's AUC apart within a few "
            "hundredths (bootstrap intervals in every report)")
    if unlabeled:
        text += (f"; plus split {UNLABELED_SPLIT!r}: {unlabeled} further subjects drawn independently from the "
                 f"same distribution (site B {int(round(unlabeled * p.site_frac))}), written without labels (label "
                 f"{NO_LABEL}) or masks, for label-free distillation (data.distill_splits); no evaluation reads it")
    return text


def _variant_info(p: SynthParams, variant: str, params: Dict[str, Any], val_frac: float, test_frac: float,
                  unlabeled: int, t0: float) -> Dict[str, Any]:
    """The datasheet fields of one variant (the benchmark, or its no-bias twin)."""
    return dict(
        name="synth-bias" + ("-twin" if variant == "twin" else ""),
        source="agglom data synth: SimBA-style synthetic bias benchmark (generated, numpy/scipy)",
        licence="CC0-1.0 (generated data)",
        params={**params, "variant": variant, "bias_effect_present": variant == "main"},
        label={"type": "binary", "num_classes": 2, "names": ["healthy", "disease"]},
        mask_definition={"member": "mask.png", "classes": ["background", "lesion"],
                         "definition": f"the disease blob at >= {LESION_LEVEL:g} of its peak, inside the organ; "
                                       "all background for healthy subjects"},
        image={"ext": "png", "channels": 1, "bit_depth": 8, "size": [p.image_size, p.image_size]},
        generation_seconds=round(time.perf_counter() - t0, 3),
        split_design=split_design(p, val_frac, test_frac, unlabeled),
    )


def write_synth(out: str, p: SynthParams, twin: bool = False, val_frac: float = 0.25, test_frac: float = 0.5,
                shard_size: int = 1000, force: bool = False, unlabeled: int = 0) -> Dict[str, Any]:
    """Generate and write the benchmark (and its twin under ``<out>/twin``); returns the datasheet. ``unlabeled``: that
    many more subjects, an independent draw from the same distribution (its own random stream, so the benchmark's
    splits are the same image for image with or without it), written as split ``unlabeled`` with attributes but
    without labels or masks: the unlabeled images a hospital has far more of than labelled ones. Both variants go
    through one :class:`agglom.data.manifest.DatasetOutput`: a failure part-way removes what this run wrote."""
    from agglom.data.manifest import DatasetOutput
    from agglom.data.masks import encode_mask
    from agglom.data.splits import default_fractions, stratified_split
    from agglom.data.writer import DatasetWriter

    p.validate()
    check_size(p, unlabeled, twin)
    t0 = time.perf_counter()
    s = subjects(p)
    keys = [f"synth{i:06d}" for i in range(p.n)]
    strata = list(zip(s["label"].tolist(), s["shortcut"].tolist(), s["site_b"].tolist()))
    assign = stratified_split(keys, strata, default_fractions(val_frac, test_frac), seed=p.seed)
    params = {**asdict(p), "val_frac": val_frac, "test_frac": test_frac, "shard_size": shard_size, "twin": twin,
              "unlabeled": unlabeled}
    pu = replace(p, n=unlabeled)
    s_un = subjects(pu, UNLABELED_SALT) if unlabeled else None
    sheet: Dict[str, Any] = {}
    splits = ["train", "val", "test"] + ([UNLABELED_SPLIT] if unlabeled else [])
    planned = splits + ([f"twin/{s}" for s in splits] if twin else [])
    with DatasetOutput.open(out, force, "agglom data synth", planned=planned) as output:
        for variant in (["main", "twin"] if twin else ["main"]):
            imgs, lesions = render(p, s, with_bias=(variant == "main"), lesions=True)
            dest = output.root if variant == "main" else output.root / "twin"
            with DatasetWriter(dest, shard_size=shard_size, output=output) as w:
                for split in ("train", "val", "test"):
                    for i, k in enumerate(keys):
                        if assign[k] == split:
                            w.write(k, _png(imgs[i]), "png", int(s["label"][i]), attrs_of(s, i), split,
                                    mask=encode_mask(lesions[i], binary_255=True),
                                    mask_area=float(lesions[i].mean()))
                if unlabeled:
                    uimgs = render(pu, s_un, with_bias=(variant == "main"), salt=UNLABELED_SALT)
                    for i in range(unlabeled):
                        w.write(f"unlab{i:06d}", _png(uimgs[i]), "png", NO_LABEL, attrs_of(s_un, i), UNLABELED_SPLIT)
                got = w.close(**_variant_info(p, variant, params, val_frac, test_frac, unlabeled, t0))
            if variant == "main":
                sheet = got
        if twin:  # record the twin in the main datasheet too
            sheet["twin"] = "twin"
            output.write_json(Path(output.root) / "dataset.json", sheet)
    return sheet


__all__ = ["SynthParams", "subjects", "render", "write_synth", "attrs_of", "check_size", "memory_needed", "MAX_N",
           "MAX_IMAGE_SIZE", "MAX_MEMORY"]
