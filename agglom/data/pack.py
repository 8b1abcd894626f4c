"""`agglom data pack`: an image folder (class subfolders -> label) or a CSV (+ DICOM) -> WebDataset shards.

Images already in png/jpg/npy are stored as they are (after a decode check); DICOM files become PNGs
(:mod:`agglom.data.dicom`: 16-bit grayscale with rescale and window, palette colour applied, the middle frame
of a multi-frame file — each conversion counted in the datasheet's ``params.dicom_converted``); other formats
PIL reads become PNGs. Unreadable files are skipped,
counted by reason and reported in the datasheet (``skipped``). Splits are stratified over label x the
``stratify`` attributes, seeded, unless a ``split_col`` gives them; with patients (``patient_col``,
``patient_from_path``: agglom/data/pack_patients.py) the draw keeps each patient in one split, and a given split
that divides a patient is refused. ``attr_bins`` counts numeric attributes per bin in the datasheet
(agglom/data/binning.py); the samples keep their values.
"""
from __future__ import annotations

import io
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from agglom.data.decode import DecodeError, decode_array
from agglom.data.downsize import downsize_image, downsize_mask
from agglom.data.pack_csv import records_from_csv
from agglom.data.paths import shown
from agglom.data.png_io import SkipImage, png_bytes

log = logging.getLogger("agglom.data.pack")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".npy", ".dcm", ".dicom", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


def load_image(path: Path, notes: Optional[Counter] = None) -> Tuple[bytes, str]:
    """Source file -> (bytes, ext) ready for a shard; raises SkipImage with a reason. DICOM conversions (a palette
    applied, the middle frame of several) are counted in ``notes``."""
    if not path.is_file():
        raise SkipImage("missing_file", f"{shown(path)}: no such file")
    suf = path.suffix.lower()
    if suf in (".dcm", ".dicom") or (suf == "" and _is_dicom(path)):
        from agglom.data.dicom import dicom_to_png

        data, done = dicom_to_png(path)  # a DicomSkip is a SkipImage with its own reason
        if notes is not None:
            notes.update(done)
        return data, "png"
    data = path.read_bytes()
    if suf in (".png", ".jpg", ".jpeg", ".npy"):
        ext = {".jpeg": "jpg"}.get(suf, suf[1:])
        try:
            decode_array(data, ext)
        except DecodeError as e:
            raise _bad_image(path, data, e) from e
        return data, ext
    from agglom.data.decode import open_pil

    try:
        img = open_pil(data, suf[1:] or "file")  # the readers' pixel limit, checked from the header before decoding
    except DecodeError as e:
        raise _bad_image(path, data, e) from e
    if img.mode in ("I;16", "I;16B", "I;16L"):
        return png_bytes(np.asarray(img).astype(np.uint16)), "png"
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), "png"


def _bad_image(path: Path, data: bytes, e: Exception) -> SkipImage:
    """``bad_image`` for a source file that does not decode, named by its path: for bytes no image format
    recognises, that (PIL's own message names an in-memory buffer, ``<_io.BytesIO object at 0x...>``, not the
    file); otherwise the decoder's reason."""
    from PIL import UnidentifiedImageError

    if isinstance(e.__cause__, UnidentifiedImageError):
        return SkipImage("bad_image", f"{shown(path)}: not an image file ({len(data)} bytes in no format PIL "
                                      "recognises); remove it from the source or convert it to PNG")
    return SkipImage("bad_image", f"{shown(path)}: {e}")


def load_mask(path: Path, image: bytes, ext: str) -> Tuple[bytes, float]:
    """A mask file -> (``mask.png`` bytes, foreground fraction), checked against its image: a 2D label map
    (:func:`agglom.data.masks.as_label_map`) of the image's height and width. Raises SkipImage (``bad_mask``)."""
    from agglom.data.masks import MaskError, encode_mask, foreground_fraction, read_mask_file

    try:
        arr = read_mask_file(path)
    except MaskError as e:
        raise SkipImage("bad_mask", f"mask {shown(path)}: {e}") from e
    shape = decode_array(image, ext).shape[:2]
    if tuple(arr.shape) != tuple(shape):
        raise SkipImage("bad_mask", f"mask {shown(path)}: {arr.shape[0]}x{arr.shape[1]} pixels for an image of "
                                    f"{shape[0]}x{shape[1]}")
    return encode_mask(arr, binary_255=bool(arr.max() <= 1)), foreground_fraction(arr)


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        return head[128:132] == b"DICM"
    except OSError:
        return False


def make_key(rel: str) -> str:
    stem = rel.rsplit(".", 1)[0] if "." in Path(rel).name else rel
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", stem).strip("_") or "sample"


def _unique(keys: List[str], rels: List[str]) -> List[str]:
    seen: Counter = Counter(keys)
    out, used = [], set()
    for k, r in zip(keys, rels):
        if seen[k] > 1:
            k = re.sub(r"[^A-Za-z0-9_\-]+", "_", r).strip("_")
        base, i = k, 1
        while k in used:
            k, i = f"{base}_{i}", i + 1
        used.add(k)
        out.append(k)
    return out


def records_from_folder(src: Path) -> Tuple[List[Dict[str, Any]], List[str]]:
    """class subfolders -> labels (sorted names -> 0..K-1); files found recursively inside each."""
    from agglom.config.load import ConfigError

    classes = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ConfigError(f"src={shown(src)}: no class subfolders found")
    recs = []
    for li, c in enumerate(classes):
        for f in sorted((src / c).rglob("*")):
            if f.is_file() and (f.suffix.lower() in IMAGE_SUFFIXES or (f.suffix == "" and _is_dicom(f))):
                recs.append({"path": f, "rel": str(f.relative_to(src)), "label": li, "attrs": {}})
    return recs, classes


def _source_records(cfg: Any, skipped: Counter, converted: Counter) -> Tuple[List[Dict[str, Any]], Any, str]:
    """(records, label names, source description) from ``src=`` (class subfolders) or ``csv=``."""
    from agglom.config.load import ConfigError

    if cfg.src:
        src = Path(cfg.src)
        if not src.is_dir():
            raise ConfigError(f"src={shown(src)} is not a folder")
        out = Path(cfg.out).resolve()
        if out == src.resolve() or src.resolve() in out.parents:
            raise ConfigError(f"out={shown(cfg.out)} is inside src={shown(src)}: the next pack would read its split folders as "
                              "classes; write the shards outside the image folder")
        recs, names = records_from_folder(src)
        source = f"image folder {src.resolve()}"
    else:
        path = Path(cfg.csv)
        if not path.is_file():
            raise ConfigError(f"csv={shown(path)}: file not found")
        recs, names = records_from_csv(path, cfg.path_col, list(cfg.label_cols), list(cfg.attr_cols),
                                       cfg.key_col, cfg.split_col, skipped, cfg.uncertain, cfg.blank, converted,
                                       mask_col=cfg.get("mask_col"), patient_col=cfg.get("patient_col"))
        if len(cfg.label_cols) > 1:
            names = list(cfg.label_cols)  # a multi-label target keeps its column names
        source = f"csv {path.resolve()}"
    if not recs:
        raise ConfigError("no samples found in the source")
    return recs, names, source


def _join_attrs(cfg: Any, keys: List[str], recs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Attributes from ``attrs_csv`` joined on file path, name or stem (or the key) into the records; the report."""
    from agglom.data.join import join, read_table

    table = read_table(Path(cfg.attrs_csv), cfg.attrs_on, patient_col=cfg.get("patient_col") if cfg.src else None)
    joined, join_report = join(zip(keys, [r["rel"] for r in recs]), table)
    for key, r in zip(keys, recs):
        r["attrs"].update(joined.get(key, {}))
    print(f"agglom data pack: attributes from {shown(cfg.attrs_csv)} joined on {cfg.attrs_on!r}: "
          f"{join_report['matched']} images matched, {join_report['samples_without_row']} without a row, "
          f"{join_report['rows_without_sample']} rows without an image", flush=True)
    return join_report


def _find_masks(cfg: Any, recs: List[Dict[str, Any]]) -> int:
    """Masks from the ``masks=`` folder (mirroring the images' relative paths, or flat by file stem) recorded as
    ``rec["mask_path"]``; how many images have one."""
    from agglom.config.load import ConfigError
    from agglom.data.masks import find_mask

    mdir = Path(cfg.masks)
    if not mdir.is_dir():
        raise ConfigError(f"masks={shown(mdir)} is not a folder")
    if cfg.get("mask_col"):
        raise ConfigError("give masks either as a CSV column (mask_col=) or as a folder (masks=), not both")
    for r in recs:
        found = find_mask(mdir, r["rel"])
        if found is not None:
            r["mask_path"] = found
    return sum(1 for r in recs if "mask_path" in r)


def _mask_of(r: Dict[str, Any], data: bytes, ext: str, problems: Counter) -> Tuple[Optional[bytes], Optional[float]]:
    """The record's mask (bytes, area) or (None, None); a bad mask is counted in ``problems`` and the image is packed
    without it."""
    if "mask_path" not in r:
        return None, None
    try:
        return load_mask(Path(r["mask_path"]), data, ext)
    except SkipImage as e:
        problems[e.reason] += 1
        log.warning("pack: %s; packed without its mask", e)
        return None, None


def _masks_params(cfg: Any, recs: List[Dict[str, Any]], problems: Counter) -> Dict[str, Any]:
    """The datasheet's ``params.masks_source`` (empty without a mask source)."""
    if not (cfg.get("mask_col") or cfg.get("masks")):
        return {}
    return {"masks_source": {"column": cfg.get("mask_col"), "folder": cfg.get("masks"),
                             "found": sum(1 for r in recs if "mask_path" in r), "dropped": dict(problems)}}


def _write(w: Any, cfg: Any, keys: List[str], recs: List[Dict[str, Any]], assign: Dict[str, str],
           skipped: Counter, notes: Counter, mask_problems: Counter) -> Tuple[int, int]:
    """Every readable record into the writer ``w``; (written, downsized)."""
    written = downsized = 0
    for key, r in zip(keys, recs):
        try:
            data, ext = load_image(r["path"], notes)
        except SkipImage as e:
            skipped[e.reason] += 1
            log.warning("pack: %s; skipped", e)
            continue
        mask, area = _mask_of(r, data, ext, mask_problems)  # checked against the source's size
        data, ext, size = downsize_image(data, ext, int(cfg.max_side))
        if size is not None:
            downsized += 1
            mask = downsize_mask(mask, size) if mask is not None else None
        w.write(key, data, ext, r["label"], r["attrs"], assign[key], extra={"source": r["rel"]},
                mask=mask, mask_area=area)
        written += 1
    return written, downsized


def _assign(cfg: Any, keys: List[str], recs: List[Dict[str, Any]]) -> Dict[str, str]:
    """key -> split: the ``split_col`` values (refused when they put a patient in two splits), or a stratified draw
    (label x ``stratify``, seeded; per patient when patients are known)."""
    from agglom.data.pack_patients import draw_split
    from agglom.data.patients import PATIENT, check_split_col

    if cfg.split_col:
        check_split_col(cfg.split_col, [r["attrs"].get(PATIENT) for r in recs], [r["split"] for r in recs])
        return {k: r["split"] for k, r in zip(keys, recs)}
    return draw_split(cfg, keys, [r["label"] for r in recs], [r["attrs"] for r in recs])


def pack(cfg: Any) -> Dict[str, Any]:
    """Pack per ``cfg`` (see :class:`agglom.data.args.PackConfig`); returns the datasheet. Everything is read and
    checked before the output folder is touched; the write goes through one
    :class:`agglom.data.manifest.DatasetOutput`, so a failure part-way (a full disk, Ctrl-C) leaves no shard."""
    from agglom.config.load import ConfigError
    from agglom.data.args import check_writer_options
    from agglom.data.manifest import DatasetOutput
    from agglom.data.writer import DatasetWriter

    check_writer_options(cfg)  # shard_size, val_frac/test_frac, max_side: before anything is read
    if bool(cfg.src) + bool(cfg.csv) + bool(cfg.get("resplit")) != 1:
        raise ConfigError("give exactly one source: src=FOLDER (class subfolders), csv=FILE or resplit=DATASET")
    if not cfg.out:
        raise ConfigError("out=DIR is required")
    from agglom.data.binning import check_attr_bins, check_bin_option
    from agglom.data.pack_patients import check_patient_options, set_patients

    check_patient_options(cfg)  # before anything is read
    check_bin_option(cfg.get("attr_bins"))
    skipped: Counter = Counter()
    converted: Counter = Counter()
    dicom_notes: Counter = Counter()
    recs, names, source = _source_records(cfg, skipped, converted)
    keys = _unique([r.get("key") or make_key(r["rel"]) for r in recs], [r["rel"] for r in recs])
    join_report = _join_attrs(cfg, keys, recs) if cfg.get("attrs_csv") else None
    if cfg.get("masks"):
        _find_masks(cfg, recs)
    patients = set_patients(cfg, keys, recs)
    bins = check_attr_bins(cfg.get("attr_bins"), [r["attrs"] for r in recs])
    assign = _assign(cfg, keys, recs)
    mask_problems: Counter = Counter()
    with DatasetOutput.open(cfg.out, cfg.force, "agglom data pack", planned=sorted(set(assign.values()))) as output, \
            DatasetWriter(output.root, shard_size=cfg.shard_size, output=output, attr_bins=bins) as w:
        written, downsized = _write(w, cfg, keys, recs, assign, skipped, dicom_notes, mask_problems)
        if written == 0:
            raise ConfigError(f"no readable images in the source (skipped: {dict(skipped)})")
        label = {"names": names} if names else {}
        sheet = w.close(name=cfg.name or Path(cfg.out).name, source=cfg.source or source, licence=cfg.licence,
                        params={"val_frac": cfg.val_frac, "test_frac": cfg.test_frac, "seed": cfg.seed,
                                "stratify": list(cfg.stratify), "split_col": cfg.split_col,
                                "shard_size": cfg.shard_size, "max_side": int(cfg.max_side), "downsized": downsized,
                                "uncertain": cfg.uncertain, "blank": cfg.blank,
                                "labels_converted": dict(converted), "dicom_converted": dict(dicom_notes),
                                **({"attrs_join": {"csv": str(cfg.attrs_csv), "on": cfg.attrs_on, **join_report}}
                                   if join_report else {}),
                                **_masks_params(cfg, recs, mask_problems),
                                **({"patients": patients} if patients else {})},
                        label=label, skipped=dict(skipped))
    return sheet


__all__ = ["pack", "load_image", "load_mask", "SkipImage", "make_key", "records_from_folder", "records_from_csv"]
