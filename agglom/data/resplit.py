"""`agglom data pack out=NEW resplit=DATASET`: existing shards rewritten with a patient-level split.

Shards packed image by image (or written by another tool) may hold one patient in train and in test. This reads
their samples' metadata (json members only), takes each sample's patient from ``patient_sidecar`` (a sidecar that
`agglom data join ... patient_col=` writes, or a CSV ``key,patient``: agglom/data/sidecars.py), else from the
samples' own attributes (``patient``, or the attribute ``patient_col`` names), else from CheXpert / MIMIC paths
(``patient_from_path=true``), draws the split per patient (agglom/data/pack_patients.py ``draw_split``: the
``seed``, ``val_frac``, ``test_frac`` and ``stratify`` of `agglom data pack`), and copies every sample into the new
folder — its image, mask and other members byte for byte, its json with the new ``split`` and the ``patient``
attribute. The splits train, val and test are pooled and redrawn; any other split folder (``unlabeled``) is
copied as it is. The source folder is never written. ``attr_bins`` (else the source datasheet's
``params.attr_bins``) counts numeric attributes per bin in the new datasheet (agglom/data/binning.py).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

from agglom.data.binning import check_attr_bins, check_bin_option
from agglom.data.counts import SkipCounts
from agglom.data.pack_patients import check_patient_options, draw_split, finish_patients
from agglom.data.paths import shown
from agglom.data.patients import PATIENT, patient_from_path
from agglom.errors import ConfigError

POOLED = ("train", "val", "test")
IMAGE_EXTS = ("png", "jpg", "jpeg", "npy", "webp", "bmp", "tif", "tiff", "gif")
NOT_WITH_RESPLIT = ("src", "csv", "mask_col", "masks", "attrs_csv", "split_col", "key_col")


def _folders(cfg: Any) -> Tuple[Path, List[str]]:
    """The source dataset folder and its split folders (those holding shards); ConfigError for a bad request."""
    given = [k for k in NOT_WITH_RESPLIT if cfg.get(k)]
    if given:
        raise ConfigError(f"resplit= rewrites existing shards: {', '.join(f'{k}=' for k in given)} belong to packing "
                          "images; leave them out")
    src = Path(cfg.resplit)
    if not src.is_dir():
        raise ConfigError(f"resplit={shown(src)} is not a folder (give a dataset folder holding <split>/*.tar)")
    out = Path(os.path.realpath(cfg.out))
    real = Path(os.path.realpath(src))
    if out == real or out in real.parents:
        raise ConfigError(f"out={shown(cfg.out)} holds resplit={shown(src)}: write the new split to another folder")
    splits = sorted((d.name for d in src.iterdir() if d.is_dir() and any(d.glob("*.tar"))),
                    key=lambda s: (POOLED + (s,)).index(s))
    if not any(s in POOLED for s in splits):
        raise ConfigError(f"resplit={shown(src)}: no shards in {', '.join(f'{s}/' for s in POOLED)}")
    return src, splits


def _metadata(src: Path, splits: List[str], counts: SkipCounts) -> Dict[str, Dict[str, Any]]:
    """key -> {"split", "meta"} of every readable sample (json members only); a key met twice is kept once."""
    from agglom.data.limits import sample_json
    from agglom.data.shards import read_shard, shard_id

    out: Dict[str, Dict[str, Any]] = {}
    for split in splits:
        for url in sorted(str(p) for p in (src / split).glob("*.tar")):
            for s in read_shard(url, counts, lambda f: f.endswith(".json")):
                key = s["__key__"]
                try:
                    meta = sample_json(s["json"])
                except (ValueError, UnicodeDecodeError) as e:
                    counts.skip("bad_json", f"{shard_id(url)}:{key}", e)
                    continue
                if not isinstance(meta, dict):
                    counts.skip("bad_json", f"{shard_id(url)}:{key}", "not a JSON object")
                elif key in out:
                    counts.skip("duplicate_key", f"{shard_id(url)}:{key}", f"also in {out[key]['split']}")
                else:
                    attrs = meta.get("attrs") if isinstance(meta.get("attrs"), dict) else {}
                    out[key] = {"split": split, "meta": meta, "attrs": dict(attrs)}
    return out


def _patients(cfg: Any, samples: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Each sample's ``attrs["patient"]`` from the sidecar, its attributes or its path; ``params.patients``."""
    from agglom.data.sidecars import load_sidecars

    check_patient_options(cfg, resplit=True)
    sidecar = load_sidecars([cfg.patient_sidecar]) if cfg.get("patient_sidecar") else {}
    col = cfg.get("patient_col") or PATIENT
    for key, s in samples.items():
        attrs = s["attrs"]
        pid = sidecar.get(key, {}).get(col, sidecar.get(key, {}).get(PATIENT))
        if pid in (None, ""):
            pid = patient_from_path(s["meta"].get("source"), key) if cfg.patient_from_path else attrs.get(col)
        if col != PATIENT and col not in cfg.attr_cols:
            attrs.pop(col, None)  # the id is the patient, not a group attribute
        attrs.pop(PATIENT, None)
        if pid not in (None, ""):
            attrs[PATIENT] = str(pid)
    where = f"the samples' attributes{' or ' + shown(cfg.patient_sidecar) if cfg.get('patient_sidecar') else ''}"
    params = finish_patients(cfg, [s["attrs"] for s in samples.values()],
                             [str(s["meta"].get("source") or k) for k, s in samples.items()], where,
                             fix="give patient_sidecar=FILE (agglom data join ... patient_col=COLUMN writes one), "
                                 "patient_col=ATTRIBUTE or patient_from_path=true")
    return {**params, "sidecar": cfg.get("patient_sidecar")}


def _assign(cfg: Any, samples: Dict[str, Dict[str, Any]]) -> Dict[str, str]:
    """key -> new split: train/val/test pooled and drawn per patient; other splits kept."""
    pooled = [k for k, s in samples.items() if s["split"] in POOLED]
    assign = draw_split(cfg, pooled, [samples[k]["meta"].get("label", -1) for k in pooled],
                        [samples[k]["attrs"] for k in pooled])
    assign.update({k: s["split"] for k, s in samples.items() if s["split"] not in POOLED})
    return assign


def _copy(w: Any, src: Path, splits: List[str], samples: Dict[str, Dict[str, Any]], assign: Dict[str, str],
          counts: SkipCounts) -> int:
    """Every sample again, whole, into the writer ``w`` under its new split; how many were written."""
    from agglom.data.masks import MASK_MEMBER
    from agglom.data.shards import read_shard, shard_id

    written: set = set()
    for split in splits:
        for url in sorted(str(p) for p in (src / split).glob("*.tar")):
            for s in read_shard(url, SkipCounts()):  # problems were counted by the first pass
                key = s["__key__"]
                info = samples.get(key)
                if info is None or info["split"] != split or key in written:
                    continue
                ext = next((e for e in IMAGE_EXTS if e in s), None)
                if ext is None:
                    counts.skip("missing_field", f"{shard_id(url)}:{key}", "no image member")
                    continue
                meta = info["meta"]
                extra = {k: v for k, v in meta.items() if k not in ("label", "attrs", "split")}
                rest = {k: v for k, v in s.items() if k not in ("__key__", "__url__", "json", ext, MASK_MEMBER)}
                w.write(key, s[ext], ext, meta.get("label", -1), info["attrs"], assign[key], extra=extra,
                        mask=s.get(MASK_MEMBER), members=rest)
                written.add(key)
    return len(written)


def resplit(cfg: Any) -> Dict[str, Any]:
    """Rewrite the shards of ``cfg.resplit`` into ``cfg.out`` with a patient-level split (see the module); returns
    the new datasheet. Everything is read and checked before the output folder is touched."""
    from agglom.data.args import check_writer_options
    from agglom.data.manifest import DatasetOutput
    from agglom.data.writer import DatasetWriter, read_datasheet

    check_writer_options(cfg)
    check_bin_option(cfg.get("attr_bins"))
    if not cfg.out:
        raise ConfigError("out=DIR is required")
    src, splits = _folders(cfg)
    old = read_datasheet(src) or {}
    counts = SkipCounts()
    samples = _metadata(src, splits, counts)
    if not samples:
        raise ConfigError(f"resplit={shown(src)}: no readable sample in its shards ({counts.describe()})")
    patients = _patients(cfg, samples)
    bins = check_attr_bins(cfg.get("attr_bins") or (old.get("params") or {}).get("attr_bins"),
                           [s["attrs"] for s in samples.values()])
    assign = _assign(cfg, samples)
    params = {**(old.get("params") or {}), "val_frac": cfg.val_frac, "test_frac": cfg.test_frac, "seed": cfg.seed,
              "stratify": list(cfg.stratify), "split_col": None, "shard_size": cfg.shard_size,
              "resplit_from": str(src.resolve()), "patients": patients}
    planned = sorted(set(assign.values()))
    with DatasetOutput.open(cfg.out, cfg.force, "agglom data pack", planned=planned) as output, \
            DatasetWriter(output.root, shard_size=cfg.shard_size, output=output, attr_bins=bins) as w:
        if _copy(w, src, splits, samples, assign, counts) == 0:
            raise ConfigError(f"resplit={shown(src)}: no sample has an image member ({counts.describe()})")
        sheet = w.close(name=cfg.name or old.get("name") or Path(cfg.out).name,
                        source=cfg.source or old.get("source") or f"resplit of {src.resolve()}",
                        licence=old.get("licence", cfg.licence) if cfg.licence == "unknown" else cfg.licence,
                        params=params, label=dict(old.get("label") or {}), skipped=counts.counts())
    return sheet


__all__ = ["resplit", "POOLED", "IMAGE_EXTS"]
