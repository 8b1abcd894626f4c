"""`agglom data synth | pack | info | join`: write the synthetic benchmark, pack images into shards, show a datasheet,
join an attribute table onto existing shards."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, List, Optional

from agglom.commands import Command
from agglom.config.load import ConfigError
from agglom.data.synth import SynthParams


@dataclass
class SynthConfig(SynthParams):
    """The generator's parameters (agglom.data.synth.SynthParams) plus where and how to write them."""

    out: str = "data/synth"
    twin: bool = False  # also write <out>/twin: same subjects without the bias effect
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


@dataclass
class InfoConfig:
    root: str = "data/synth"


def _run_synth(cfg: Any) -> int:
    from agglom.data.synth import SynthParams, write_synth
    from agglom.data.writer import summary_table

    params = SynthParams.from_config(cfg)
    try:
        params.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from e
    t0 = time.perf_counter()
    sheet = write_synth(cfg.out, params, twin=cfg.twin, val_frac=cfg.val_frac, test_frac=cfg.test_frac,
                        shard_size=cfg.shard_size, force=cfg.force)
    print(summary_table(sheet))
    print(f"\nwrote {sheet['samples']} samples to {cfg.out}" + (f" (+ twin in {cfg.out}/twin)" if cfg.twin else "")
          + f" in {time.perf_counter() - t0:.1f}s")
    return 0


def _run_pack(cfg: Any) -> int:
    from agglom.data.pack import pack
    from agglom.data.writer import summary_table

    sheet = pack(cfg)
    print(summary_table(sheet))
    skipped = sheet.get("skipped") or {}
    print(f"\nwrote {sheet['samples']} samples to {cfg.out}; skipped {sum(skipped.values())}"
          + (f" {skipped}" if skipped else ""))
    return 0


def _run_join(cfg: Any) -> int:
    from agglom.data.join import join_onto_shards

    out, report = join_onto_shards(cfg.root, cfg.shards, cfg.csv, cfg.on, cfg.match, list(cfg.attr_cols),
                                   list(cfg.splits), cfg.out)
    print(f"agglom data join: {report['matched']} samples matched, {report['samples_without_row']} without a row, "
          f"{report['rows_without_sample']} rows without a sample -> {out}\n"
          f"  use it with data.sidecars=[{out}] (and groups.by=<attribute>)")
    return 0


def _run_info(cfg: Any) -> int:
    from agglom.data.writer import read_datasheet, summary_table

    sheet = read_datasheet(cfg.root)
    if sheet is None:
        raise ConfigError(f"no dataset.json in {cfg.root}")
    print(summary_table(sheet))
    return 0


synth = Command(schema=SynthConfig, run=_run_synth, positional="out",
                help="write the synthetic bias benchmark (shortcut + rare site; optional no-bias twin)")
pack = Command(schema=PackConfig, run=_run_pack, positional="out",
               help="pack an image folder or a CSV (+ DICOM) into WebDataset shards with a datasheet")
info = Command(schema=InfoConfig, run=_run_info, positional="root", help="print a dataset's datasheet summary")
join = Command(schema=JoinConfig, run=_run_join, positional="root",
               help="join an attribute CSV (keyed by sample key or file name) onto existing shards as a sidecar")
