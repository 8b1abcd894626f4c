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
- ``sex`` ("F"/"M"): a small organ-size effect; ``age`` (int): a small intensity/texture effect. Both leave the
  disease equally visible unless ``age_lesion`` / ``sex_lesion`` fade the lesion with age / in women (a variant in
  which the review's other biases matter: docs/ablations.md).
- ``images_per_patient=K`` (default 1): K follow-ups per subject: one anatomy, attributes (age too) and label, each
  its own pose, intensity, texture and grain; attribute ``patient`` (agglom/data/patients.py) names the subject and
  splits keep it whole. K=1 writes the one-image-per-subject benchmark unchanged (docs/guide/data.md).

Counts are exact (disease prevalence, shortcut prevalence per class, site B and sex fractions are realised by
permutation, not by coin flips), and splits are stratified over label x shortcut x site. The matched twin
(``twin=true`` -> ``<out>/twin``) re-renders the same subjects with identical random draws and no bias effect:
images of subjects without the shortcut are byte-identical, those with it differ.
"""
from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
from scipy import ndimage

from agglom.data.patients import PATIENT

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
MAX_IMAGES_PER_PATIENT = 64
GRID = 5  # the control grid of the subject's smooth displacement field (GRID x GRID points)
# a follow-up's own acquisition (images_per_patient > 1), standard deviations: rotation (radians, ~1.7 degrees),
# shift (the field of view spans -1..1, so ~1.5% of its width), organ intensity level (0..1 scale)
FOLLOW_UP_ROT, FOLLOW_UP_SHIFT, FOLLOW_UP_LEVEL = 0.03, 0.03, 0.02


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
    # the lesion's contrast lost by the oldest subject (age_max) against the youngest (age_min), a fraction in
    # [0, 1), and by women against men: 0 (the default benchmark) leaves the disease equally visible in every group;
    # e.g. 0.5 makes it harder to see with age (a group-dependent effect an attribute-blind model can miss)
    age_lesion: float = 0.0
    sex_lesion: float = 0.0
    age_min: int = 20
    age_max: int = 90
    deform: float = 0.08
    texture: float = 0.04
    images_per_patient: int = field(default=1, metadata={"help": (
        f"1..{MAX_IMAGES_PER_PATIENT}: follow-up studies per subject (same anatomy, attributes, label; new pose and "
        "noise), each naming its subject as attribute `patient`; splits keep a patient whole")})

    @classmethod
    def from_config(cls, cfg: Any) -> "SynthParams":
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)})

    def validate(self) -> None:
        """ValueError naming the first parameter out of its range, the range and why."""
        if not 1 <= self.n <= MAX_N:
            raise ValueError(f"n={self.n}: give 1..{MAX_N:,} subjects (every image is rendered in memory before it "
                             "is written, and writing runs at a few thousand images a second)")
        k = self.images_per_patient
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_IMAGES_PER_PATIENT:
            raise ValueError(f"images_per_patient={k!r}: give a whole number 1..{MAX_IMAGES_PER_PATIENT} (follow-up "
                             "images per synthetic subject; 1 = one image each, no patient attribute)")
        if self.n * k > MAX_N:
            raise ValueError(f"n={self.n} x images_per_patient={k}: give at most {MAX_N:,} images in all")
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
        for name in ("age_lesion", "sex_lesion"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)}: give a fraction in [0, 1) (the share of the lesion's "
                                 "contrast that group loses; 1 would erase the disease from it)")
        if self.age_max <= self.age_min:
            raise ValueError(f"age_max must exceed age_min, got {self.age_min}..{self.age_max}")


def memory_needed(p: SynthParams, unlabeled: int = 0, twin: bool = False) -> int:
    """Bytes `agglom data synth` holds at its peak: all images and masks of a variant (and the previous variant's
    while the twin renders) plus one block being rendered; ``images_per_patient`` images per subject."""
    pixels = p.image_size * p.image_size
    held = (p.n * 2 + unlabeled) * p.images_per_patient * pixels * (2 if twin else 1)
    return held + RENDER_BYTES_PER_PIXEL * min(max(p.n, unlabeled) * p.images_per_patient, CHUNK) * pixels


def check_size(p: SynthParams, unlabeled: int = 0, twin: bool = False) -> None:
    """ValueError when ``unlabeled`` is out of range or the write would need more than :data:`MAX_MEMORY`."""
    if not 0 <= unlabeled <= MAX_N:
        raise ValueError(f"unlabeled={unlabeled}: give 0..{MAX_N:,} extra subjects without labels (rendered in "
                         "memory like the others)")
    need = memory_needed(p, unlabeled, twin)
    if need > MAX_MEMORY:
        k = f" x images_per_patient={p.images_per_patient}" if p.images_per_patient > 1 else ""
        raise ValueError(f"n={p.n} (+ unlabeled={unlabeled}){k} at image_size={p.image_size}"
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


def follow_ups(p: SynthParams, s: Dict[str, np.ndarray], salt: int = 0) -> Dict[str, np.ndarray]:
    """Per-image scalars from per-subject ones: ``s`` itself when ``images_per_patient`` is 1; else each entry
    repeated K times (image ``j*K + v`` is subject j's follow-up v), the subject's anatomy (its displacement field,
    drawn once: ``anatomy`` indexed by ``subject``) and each image's own pose and intensity jitter."""
    k = p.images_per_patient
    if k == 1:
        return s
    n = len(s["label"])
    rng = _stream(p, salt, 3)
    out = {name: np.repeat(v, k, axis=0) for name, v in s.items()}
    out["anatomy"] = rng.standard_normal((n, 2, GRID, GRID)).astype(np.float32) * p.deform
    out["subject"] = np.repeat(np.arange(n), k)
    out["rot"] = out["rot"] + (FOLLOW_UP_ROT * rng.standard_normal(n * k)).astype(np.float32)
    out["shift"] = (FOLLOW_UP_SHIFT * rng.standard_normal((n * k, 2))).astype(np.float32)
    out["level"] = out["level"] + (FOLLOW_UP_LEVEL * rng.standard_normal(n * k)).astype(np.float32)
    return out


def _upsampler(g: int, size: int) -> np.ndarray:
    """[size, g] cubic B-spline weights: a smooth separable upsampling of a g x g control grid."""
    t = np.linspace(0.0, g - 1.0, size)[:, None] - np.arange(g)[None, :]
    a = np.abs(t)
    w = np.where(a < 1, 2 / 3 - a ** 2 + a ** 3 / 2, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _render_chunk(p: SynthParams, s: Dict[str, np.ndarray], lo: int, hi: int, with_bias: bool,
                  lesions: Optional[np.ndarray] = None, salt: int = 0) -> np.ndarray:
    """Render images [lo, hi) of ``s`` (:func:`follow_ups`) -> uint8 [m, S, S]. The randomness drawn here comes from
    rng(seed, 2, lo). ``lesions`` (uint8 [m, S, S], filled in place when given): the ground-truth lesion mask,
    computed from the same geometry without drawing anything, so images are the same with or without it."""
    S = p.image_size
    m = hi - lo
    rng = _stream(p, salt, 2, lo)
    coarse = (s["anatomy"][s["subject"][lo:hi]] if "anatomy" in s  # follow-ups: their subject's displacement field
              else rng.standard_normal((m, 2, GRID, GRID)).astype(np.float32) * p.deform)
    tex = rng.standard_normal((m, S, S)).astype(np.float32)
    grain = rng.standard_normal((m, S, S)).astype(np.float32)
    up = _upsampler(GRID, S)
    disp = np.einsum("ik,nckl,jl->ncij", up, coarse, up, optimize=True)

    lin = np.linspace(-1.0, 1.0, S, dtype=np.float32)
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    x = xx[None] + disp[:, 0]
    y = yy[None] + disp[:, 1]
    sl = slice(lo, hi)
    if "shift" in s:  # a follow-up's own position in the field of view
        x, y = x - s["shift"][sl, 0][:, None, None], y - s["shift"][sl, 1][:, None, None]
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
    organ = organ + p.disease_strength * s["label"][sl][:, None, None] * blob * _lesion_contrast(p, s, sl)
    if lesions is not None:  # the lesion: where the disease effect is at least half its peak, inside the organ
        lesions[...] = (s["label"][sl][:, None, None] & (blob >= LESION_LEVEL) & (mask >= 0.5)).astype(np.uint8)
    if p.bias in ("intensity", "both"):  # intensity + contrast shift inside the organ
        f = shortcut[:, None, None].astype(np.float32)
        organ = organ + f * (p.bias_strength * 0.5 + p.bias_strength * (organ - 0.5))
    img = 0.06 + mask * (organ - 0.06)
    img = np.clip(img, 0.0, 1.0)
    _site_b_acquisition(p, img, s["site_b"][sl], grain)
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _lesion_contrast(p: SynthParams, s: Dict[str, np.ndarray], sl: slice) -> Any:
    """The lesion's contrast per subject, [m, 1, 1] (``age_lesion``, ``sex_lesion``); exactly 1.0 when both are 0."""
    if not (p.age_lesion or p.sex_lesion):
        return np.float32(1.0)
    age01 = (s["age"][sl].astype(np.float32) - p.age_min) / float(p.age_max - p.age_min)
    female = 1.0 - s["male"][sl].astype(np.float32)
    return ((1.0 - p.age_lesion * age01) * (1.0 - p.sex_lesion * female))[:, None, None]


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
    """All images, uint8 [n * K, S, S] (K = ``images_per_patient``; ``s`` per subject, :func:`subjects`);
    ``with_bias=False`` renders the no-bias twin of the same subjects.
    ``lesions=True`` returns ``(images, masks)``, masks uint8 [n * K, S, S] in {0, 1}: the disease lesion of each
    diseased subject (all background for a healthy one), in the image's geometry (the morphology bias moves it
    with the anatomy; site B's acquisition changes intensities only)."""
    p.validate()
    im = follow_ups(p, subjects(p, salt) if s is None else s, salt)
    count = p.n * p.images_per_patient
    out = np.empty((count, p.image_size, p.image_size), dtype=np.uint8)
    masks = np.zeros_like(out) if lesions else None
    for lo in range(0, count, CHUNK):
        hi = min(count, lo + CHUNK)
        out[lo:hi] = _render_chunk(p, im, lo, hi, with_bias, None if masks is None else masks[lo:hi], salt)
    return (out, masks) if lesions else out


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def attrs_of(s: Dict[str, np.ndarray], i: int, patient: Optional[str] = None) -> Dict[str, Any]:
    """Subject ``i``'s attributes (+ ``patient``: its id, when it has several images)."""
    attrs = {"site": "B" if s["site_b"][i] else "A", "sex": "M" if s["male"][i] else "F", "age": int(s["age"][i]),
             "shortcut": "1" if s["shortcut"][i] else "0"}
    return attrs if patient is None else {**attrs, PATIENT: patient}


def split_design(p: SynthParams, val_frac: float, test_frac: float, unlabeled: int = 0) -> str:
    """How the splits were drawn, for the datasheet."""
    train = 1.0 - val_frac - test_frac
    k = p.images_per_patient
    rare = int(round(p.n * test_frac * p.site_frac)) * k
    text = (f"every split stratified by label x shortcut x site (natural group proportions in each: site B "
            f"{p.site_frac:.0%}); fractions train {train:.2f} / val {val_frac:.2f} / test {test_frac:.2f}, so the "
            f"test split holds ~{rare} samples of the rare site B: enough to tell a group's AUC apart within a few "
            "hundredths (bootstrap intervals in every report)")
    if unlabeled:
        text += (f"; plus split {UNLABELED_SPLIT!r}: {unlabeled} further subjects drawn independently from the "
                 f"same distribution (site B {int(round(unlabeled * p.site_frac))}), written without labels (label "
                 f"{NO_LABEL}) or masks, for label-free distillation (data.distill_splits); no evaluation reads it")
    if k > 1:
        text += (f"; {k} images per patient (follow-up studies of one subject: its anatomy, attributes and label, "
                 f"a new pose and noise; attribute {PATIENT!r}), splits drawn per patient so no patient spans two")
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


def _write_subject(w: Any, p: SynthParams, s: Dict[str, np.ndarray], j: int, key: str, split: str,
                   imgs: np.ndarray, lesions: Optional[np.ndarray] = None) -> None:
    """Subject j's K images ``imgs[j*K : j*K+K]`` as ``key`` (K=1) or ``key_<v>`` with patient ``key`` (K>1);
    labelled, with their masks, when ``lesions`` is given, else without a label (the unlabeled split)."""
    from agglom.data.masks import encode_mask

    k = p.images_per_patient
    for v, i in enumerate(range(j * k, j * k + k)):
        name, attrs = (key, attrs_of(s, j)) if k == 1 else (f"{key}_{v}", attrs_of(s, j, key))
        mask = {} if lesions is None else dict(mask=encode_mask(lesions[i], binary_255=True),
                                               mask_area=float(lesions[i].mean()))
        w.write(name, _png(imgs[i]), "png", NO_LABEL if lesions is None else int(s["label"][j]), attrs, split, **mask)


def write_synth(out: str, p: SynthParams, twin: bool = False, val_frac: float = 0.25, test_frac: float = 0.5,
                shard_size: int = 1000, force: bool = False, unlabeled: int = 0) -> Dict[str, Any]:
    """Generate and write the benchmark (and its twin under ``<out>/twin``); returns the datasheet. ``unlabeled``: that
    many more subjects, an independent draw from the same distribution (its own random stream, so the benchmark's
    splits are the same image for image with or without it), written as split ``unlabeled`` with attributes but
    without labels or masks: the unlabeled images a hospital has far more of than labelled ones. Both variants go
    through one :class:`agglom.data.manifest.DatasetOutput`: a failure part-way removes what this run wrote. Splits
    are drawn per subject, so a subject's follow-ups (``images_per_patient``) share one."""
    from agglom.data.manifest import DatasetOutput
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
    if p.images_per_patient == 1:  # the one-image-per-subject benchmark's datasheet, byte for byte
        del params["images_per_patient"]
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
                    for j, key in enumerate(keys):
                        if assign[key] == split:
                            _write_subject(w, p, s, j, key, split, imgs, lesions)
                if unlabeled:
                    uimgs = render(pu, s_un, with_bias=(variant == "main"), salt=UNLABELED_SALT)
                    for j in range(unlabeled):
                        _write_subject(w, pu, s_un, j, f"unlab{j:06d}", UNLABELED_SPLIT, uimgs)
                got = w.close(**_variant_info(p, variant, params, val_frac, test_frac, unlabeled, t0))
            if variant == "main":
                sheet = got
        if twin:  # record the twin in the main datasheet too
            sheet["twin"] = "twin"
            output.write_json(Path(output.root) / "dataset.json", sheet)
    return sheet


__all__ = ["SynthParams", "subjects", "follow_ups", "render", "write_synth", "attrs_of", "check_size",
           "memory_needed", "MAX_N", "MAX_IMAGE_SIZE", "MAX_MEMORY", "MAX_IMAGES_PER_PATIENT"]
