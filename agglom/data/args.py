"""The options of `agglom data synth | pack | info | join` (torch-free: `agglom --help` and a bad value stay fast).

The commands (:mod:`agglom.commands.data`) parse these and call :mod:`agglom.data.run`, which checks them before
anything is read or written: the generator's own (:meth:`agglom.data.synth.SynthParams.validate`,
:func:`agglom.data.synth.check_size`) and those the writers share (:func:`check_writer_options`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from agglom.data.synth import SynthParams

PATIENT_COL_HELP = ("the column with each image's patient id (the CSV's; a folder pack's attrs_csv's; with resplit= "
                    "an attribute of the samples): stored as the attribute `patient`, and no patient is split")
ATTR_BINS_HELP = ("numeric attributes counted in bins in the datasheet, e.g. {Age: [0, 40, 60, 80, 200]}: images and "
                  "patients per split x bin ([0,40) ...) and out of range / missing; the samples keep their values "
                  "(with resplit=: default the source datasheet's bins)")


@dataclass
class SynthConfig(SynthParams):
    """The generator's parameters (agglom.data.synth.SynthParams) plus where and how to write them."""

    out: str = "data/synth"
    twin: bool = False  # also write <out>/twin: same subjects without the bias effect
    unlabeled: int = 0  # also write split `unlabeled`: this many more subjects, no labels (data.distill_splits)
    val_frac: float = 0.25
    test_frac: float = 0.5  # large: a few hundred test samples of the rare site, so group AUCs can be told apart
    shard_size: int = 1000
    force: bool = False


@dataclass
class PackConfig:
    out: str = ""
    src: Optional[str] = None  # image folder: one subfolder per class
    csv: Optional[str] = None  # CSV with a path column, label column(s), attribute columns
    path_col: str = "path"
    label_cols: List[str] = field(default_factory=lambda: ["label"])  # several = multi-label (each binary)
    uncertain: str = "zeros"  # a -1 (uncertain) label: zeros | ones | drop (CheXpert's U-Zeros / U-Ones)
    blank: str = "zeros"  # an empty cell in a multi-label column (not mentioned): zeros | drop
    attr_cols: List[str] = field(default_factory=list)  # empty = every other column
    key_col: Optional[str] = None
    split_col: Optional[str] = None  # take splits from this column instead of drawing them
    stratify: List[str] = field(default_factory=list)  # attributes stratified with the label
    val_frac: float = 0.15
    test_frac: float = 0.15
    seed: int = 0
    shard_size: int = 1000
    name: str = ""
    source: str = ""
    licence: str = "unknown"
    force: bool = False
    attrs_csv: Optional[str] = None  # an attribute table joined onto the images (e.g. a folder pack's demographics)
    attrs_on: str = "file"  # its column matched against each image's path (relative to src), name or stem
    mask_col: Optional[str] = None  # CSV column holding each image's segmentation mask file (blank: no mask)
    masks: Optional[str] = None  # a folder of masks: <masks>/<image path relative to src/CSV, suffix .png>, or by stem
    max_side: int = 0  # shrink images whose longer side exceeds this (px; 16-bit stays 16-bit; masks follow); 0 = keep
    patient_col: Optional[str] = field(default=None, metadata={"help": PATIENT_COL_HELP})
    patient_from_path: bool = field(default=False, metadata={"help": "take each image's patient from a CheXpert "
                                    "(patientNNNNN/studyN/) or MIMIC (pNN/pNNNNNNNN/sNNNN/) path"})
    patient_attrs: str = field(default="per_image", metadata={"help": "an attribute that differs between one "
                               "patient's images: per_image (each keeps its own) | first (the patient's first value) "
                               "| refuse"})
    resplit: Optional[str] = field(default=None, metadata={"help": "a dataset folder whose shards are rewritten "
                                   "with a patient-level split (instead of src= / csv=)"})
    patient_sidecar: Optional[str] = field(default=None, metadata={"help": "with resplit=: a sidecar giving each "
                                           "sample's patient (agglom data join patient_col=, or a CSV key,patient)"})
    attr_bins: Dict[str, List[float]] = field(default_factory=dict, metadata={"help": ATTR_BINS_HELP})


@dataclass
class JoinConfig:
    """`agglom data join`: an attribute CSV -> a sidecar for existing shards (no shard is rewritten)."""

    root: str = "data/synth"  # the dataset folder (or give shards=)
    shards: Optional[str] = None  # a brace pattern / glob instead of root/<split>/*.tar
    csv: str = ""  # the attribute table
    on: str = "key"  # its column holding the sample key, or the source file's path, name or stem
    match: str = "auto"  # auto (key, then path, name, stem) | key | path | name | stem
    attr_cols: List[str] = field(default_factory=list)  # default: every other column
    splits: List[str] = field(default_factory=lambda: ["train", "val", "test"])
    out: Optional[str] = None  # default <dataset folder>/<csv stem>_attrs.json
    patient_col: Optional[str] = field(default=None, metadata={"help": "the table's patient id column: written to "
                                       "the sidecar as `patient` (for pack resplit=); patients in two splits counted"})


@dataclass
class InfoConfig:
    root: str = "data/synth"


def check_writer_options(cfg: Any) -> None:
    """ConfigError naming the first of ``shard_size``, ``val_frac`` / ``test_frac`` and ``max_side`` (those of
    them ``cfg`` has) out of range, the range and why: checked before a folder is touched, so a typo never clears
    an output folder or ends in a traceback from the writer."""
    from agglom.config.load import ConfigError

    if hasattr(cfg, "shard_size") and not int(cfg.shard_size) >= 1:
        raise ConfigError(f"shard_size={cfg.shard_size}: give 1 or more samples per shard file (1000 is usual: "
                          "shards of a few MB that readers can shuffle)")
    if hasattr(cfg, "val_frac") or hasattr(cfg, "test_frac"):
        val, test = float(getattr(cfg, "val_frac", 0.0)), float(getattr(cfg, "test_frac", 0.0))
        for name, v in (("val_frac", val), ("test_frac", test)):
            if not (math.isfinite(v) and 0.0 <= v < 1.0):
                raise ConfigError(f"{name}={v:g}: give a fraction in [0, 1) (the share of samples drawn into "
                                  f"{name[:-5]})")
        if not val + test < 1.0:
            raise ConfigError(f"val_frac={val:g} + test_frac={test:g} = {val + test:g}: together they must stay "
                              "under 1, since the rest of the samples is the training split")
    if hasattr(cfg, "max_side") and int(cfg.max_side) < 0:
        raise ConfigError(f"max_side={cfg.max_side}: give a size >= 1 in pixels, or 0 to keep every image's size")
