"""Shard writing shared by `agglom data pack` and `agglom data synth`: atomic shards + the datasheet.

Layout: ``<root>/<split>/<split>-%06d.tar``, ``<root>/dataset.json`` and ``<root>/agglom-manifest.json`` (what the
write created: :mod:`agglom.data.manifest`, which is what ``force=true`` removes and what a failed write takes
back). Each shard is written as ``<name>.tar.tmp`` and renamed into place only when complete, so a crash never
leaves a half shard that readers would take for a good one.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

import webdataset as wds

from agglom.data.binning import BinCounter, attribute_lines, patient_lines
from agglom.data.groups import fmt_value
from agglom.data.jsonfile import read_json, write_json_atomic
from agglom.data.manifest import DATASHEET, FORMAT, DatasetOutput, shard_name
from agglom.data.patients import MAX_NUMERIC_GROUPS, PATIENT, PatientCounter, summary_lines

_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
MAX_LISTED_NUMERIC_VALUES = 32


# --------------------------------------------------------------------------- datasheet statistics
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _label_keys(label: Any) -> List[str]:
    if isinstance(label, (list, tuple)):
        return [str(i) for i, v in enumerate(label) if v]
    return [str(label)]


def _summary(xs: List[float]) -> Dict[str, float]:
    if not xs:
        return {"n": 0}
    xs = sorted(xs)
    n = len(xs)
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / n

    def q(p: float) -> float:
        return xs[min(n - 1, int(round(p * (n - 1))))]

    return {"n": n, "min": xs[0], "max": xs[-1], "mean": round(mean, 6), "std": round(math.sqrt(var), 6),
            "p25": q(0.25), "median": q(0.5), "p75": q(0.75)}


class DatasheetBuilder:
    """Accumulates counts per split x label x attribute value while samples are written. The patient id (attribute
    ``patient``) is no attribute here: it is counted apart (:class:`agglom.data.patients.PatientCounter`).
    ``attr_bins`` (attribute -> bin edges, checked by the caller: agglom/data/binning.py ``check_attr_bins``) adds
    images and patients per split x bin (``attribute_bins``) and the edges (``params.attr_bins``)."""

    def __init__(self, attr_bins: Optional[Mapping[str, Any]] = None) -> None:
        self.split_counts: Counter = Counter()
        self.label_counts: Dict[str, Counter] = defaultdict(Counter)
        self.multilabel: Optional[int] = None
        self.attr_values: Dict[str, Dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
        self.attr_by_label: Dict[str, Dict[str, Dict[str, Counter]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(Counter)))
        self.attr_present: Dict[str, Counter] = defaultdict(Counter)
        self.attr_numeric: Dict[str, bool] = {}
        self.numeric_values: Dict[str, Dict[str, List[float]]] = defaultdict(lambda: defaultdict(list))
        self.shards: Counter = Counter()
        # masks: per split the masked samples and the sum of their foreground fractions, and the same per
        # attribute value (the datasheet's "masks" section; absent when no sample has a mask)
        self.mask_counts: Counter = Counter()
        self.mask_area: Counter = Counter()
        self.mask_by_attr: Dict[str, Dict[str, Dict[str, List[float]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(lambda: [0, 0.0])))
        self.patients = PatientCounter()
        self.bins = BinCounter(attr_bins)

    def add(self, split: str, label: Any, attrs: Mapping[str, Any], mask_area: Optional[float] = None) -> None:
        self.split_counts[split] += 1
        self.patients.add(split, attrs or {})
        self.bins.add(split, attrs or {})
        attrs = {a: v for a, v in (attrs or {}).items() if a != PATIENT}
        if mask_area is not None:
            self.mask_counts[split] += 1
            self.mask_area[split] += float(mask_area)
            for a, v in (attrs or {}).items():
                if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
                    continue
                cell = self.mask_by_attr[a][split][fmt_value(v)]
                cell[0] += 1
                cell[1] += float(mask_area)
        if isinstance(label, (list, tuple)):
            self.multilabel = len(label)
        for lk in _label_keys(label):
            self.label_counts[split][lk] += 1
        lkey = json.dumps(label) if isinstance(label, (list, tuple)) else str(label)
        for a, v in (attrs or {}).items():
            if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
                continue
            self.attr_present[a][split] += 1
            num = _is_number(v)
            self.attr_numeric[a] = self.attr_numeric.get(a, True) and num
            if num:
                self.numeric_values[a][split].append(float(v))
            s = fmt_value(v)
            self.attr_values[a][split][s] += 1
            self.attr_by_label[a][split][lkey][s] += 1

    def build(self, **info: Any) -> Dict[str, Any]:
        splits = sorted(self.split_counts, key=lambda s: (["train", "val", "test"] + [s]).index(s))
        labels_all = sorted({k for c in self.label_counts.values() for k in c}, key=lambda k: (len(k), k))
        label_info: Dict[str, Any] = dict(info.pop("label", {}) or {})
        if self.multilabel is not None:
            label_info.setdefault("type", "multilabel")
            label_info.setdefault("num_classes", self.multilabel)
        else:
            nc = (max(int(k) for k in labels_all) + 1) if labels_all else 0
            label_info.setdefault("type", "binary" if nc <= 2 else "multiclass")
            label_info.setdefault("num_classes", nc)
        attributes: Dict[str, Any] = {}
        for a in sorted(self.attr_present):
            numeric = self.attr_numeric.get(a, False)
            distinct = sorted({v for c in self.attr_values[a].values() for v in c},
                              key=(lambda s: float(s)) if numeric else None)
            entry: Dict[str, Any] = {"type": "numeric" if numeric else "categorical",
                                     "missing": {s: self.split_counts[s] - self.attr_present[a][s] for s in splits}}
            if not numeric or len(distinct) <= MAX_LISTED_NUMERIC_VALUES:
                entry["values"] = distinct
                entry["counts"] = {s: dict(sorted(self.attr_values[a][s].items())) for s in splits}
                entry["by_label"] = {s: {lk: dict(sorted(c.items())) for lk, c in sorted(self.attr_by_label[a][s].items())}
                                     for s in splits}
            if numeric:
                allv = [x for s in splits for x in self.numeric_values[a][s]]
                entry["summary"] = {"all": _summary(allv), **{s: _summary(self.numeric_values[a][s]) for s in splits}}
            attributes[a] = entry
        sheet: Dict[str, Any] = {
            "format": FORMAT,
            "name": info.pop("name", ""),
            "source": info.pop("source", ""),
            "licence": info.pop("licence", ""),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "params": {**info.pop("params", {}), **({"attr_bins": self.bins.params()} if self.bins else {})},
            "label": label_info,
            "samples": sum(self.split_counts.values()),
            "splits": {s: {"samples": self.split_counts[s], "shards": self.shards[s],
                           "labels": dict(sorted(self.label_counts[s].items(), key=lambda kv: (len(kv[0]), kv[0])))}
                       for s in splits},
            "attributes": attributes,
        }
        if self.mask_counts:
            sheet["masks"] = self._masks_section(splits, attributes)
        if self.patients:
            sheet["patients"] = self.patients.section(splits, attributes)
        if self.bins:
            sheet["attribute_bins"] = self.bins.section(splits)
        sheet.update(info)
        return sheet

    def _masks_section(self, splits: List[str], attributes: Mapping[str, Any]) -> Dict[str, Any]:
        """``{"splits": {split: {"samples", "without_mask", "mean_area"}}, "by_attribute": {attr: {split: {value:
        {"samples", "mean_area"}}}}}``: how many samples carry a mask and the mean foreground fraction of their masks
        (an all-background mask counts with area 0), per split and per attribute value (attributes listed with
        their values in the datasheet; a numeric one with many values is summarised only per split)."""
        def mean(total: float, n: int) -> Optional[float]:
            return round(total / n, 6) if n else None

        out: Dict[str, Any] = {"splits": {s: {"samples": int(self.mask_counts[s]),
                                              "without_mask": int(self.split_counts[s] - self.mask_counts[s]),
                                              "mean_area": mean(self.mask_area[s], self.mask_counts[s])}
                                          for s in splits}}
        by_attr: Dict[str, Any] = {}
        for a in sorted(self.mask_by_attr):
            if "values" not in attributes.get(a, {}):
                continue
            by_attr[a] = {s: {v: {"samples": int(c[0]), "mean_area": mean(c[1], int(c[0]))}
                              for v, c in sorted(self.mask_by_attr[a][s].items())} for s in splits}
        out["by_attribute"] = by_attr
        return out


# --------------------------------------------------------------------------- shard writer
class _SplitWriter:
    def __init__(self, output: DatasetOutput, folder: Path, split: str, shard_size: int):
        self.output, self.folder, self.split, self.shard_size = output, folder, split, shard_size
        self.index = 0
        self.count = 0
        self.tmp: Optional[Path] = None
        self.final: Optional[Path] = None
        self.writer: Optional[wds.TarWriter] = None

    def _open(self) -> None:
        # listed before it exists, and checked: no symbolic link on the way (its path under the resolved root)
        self.final = final = self.output.file(self.folder / shard_name(self.split, self.index))
        self.tmp = final.with_name(final.name + ".tmp")
        self.writer = wds.TarWriter(str(self.tmp), encoder=False, mtime=0.0)
        self.count = 0

    def _finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
            assert self.tmp is not None and self.final is not None
            os.replace(self.tmp, self.final)
            self.index += 1
            self.writer, self.tmp = None, None

    def write(self, sample: Dict[str, Any]) -> None:
        if self.writer is None:
            self._open()
        assert self.writer is not None
        self.writer.write(sample)
        self.count += 1
        if self.count >= self.shard_size:
            self._finish()

    def close(self) -> int:
        self._finish()
        return self.index

    def abort(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError:  # a full disk fails the close too; the file goes either way
                pass
            finally:
                if self.tmp is not None and self.tmp.exists():
                    self.tmp.unlink()
                self.writer = None


class DatasetWriter:
    """Write samples into per-split shards and the datasheet; use as a context manager.

    ``write(key, image_bytes, ext, label, attrs, split)``; ``close(**info)`` writes ``dataset.json`` and returns it.
    ``attr_bins``: numeric attributes counted in bins in the datasheet (:class:`DatasheetBuilder`).
    Every file goes through a :class:`agglom.data.manifest.DatasetOutput`: ``output`` when the caller holds one
    (several writers into one folder, as `agglom data synth` and its twin), else one opened here on ``root`` (which
    refuses or, with ``force``, clears a previous dataset). Leaving the ``with`` block with an exception removes what
    was written.
    """

    def __init__(self, root: os.PathLike, shard_size: int = 1000, force: bool = False,
                 output: Optional[DatasetOutput] = None, attr_bins: Optional[Mapping[str, Any]] = None):
        if shard_size < 1:  # the commands refuse it first (agglom.data.args.check_writer_options)
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self._own = output is None
        self.output = DatasetOutput.open(root, force) if output is None else output
        self.root = self.output.folder(self.output.root if self._own else root)  # under the resolved root
        self.shard_size = int(shard_size)
        self._writers: Dict[str, _SplitWriter] = {}
        self._keys: set = set()
        self.sheet = DatasheetBuilder(attr_bins)
        self.datasheet: Optional[Dict[str, Any]] = None

    def write(self, key: str, image: bytes, ext: str, label: Any, attrs: Mapping[str, Any], split: str,
              extra: Optional[Mapping[str, Any]] = None, mask: Optional[bytes] = None,
              mask_area: Optional[float] = None, members: Optional[Mapping[str, bytes]] = None) -> None:
        """One sample; ``mask``: the PNG bytes of its segmentation mask (:mod:`agglom.data.masks`), written as the
        ``mask.png`` member, with ``mask_area`` its foreground fraction for the datasheet; ``members``: further
        members kept as they are (a sample copied from other shards)."""
        if not _KEY_RE.match(key):
            raise ValueError(f"sample key {key!r} must use only letters, digits, '_' and '-' (no dots or slashes)")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r}")
        if not _KEY_RE.match(split):
            raise ValueError(f"bad split name {split!r}")
        self._keys.add(key)
        meta = {"label": label, "attrs": dict(attrs), "split": split}
        if extra:
            meta.update(extra)
        w = self._writers.get(split)
        if w is None:
            w = self._writers[split] = _SplitWriter(self.output, self.root / split, split, self.shard_size)
        sample = {**(members or {}), "__key__": key, ext: bytes(image),
                  "json": json.dumps(meta, sort_keys=True).encode("utf-8")}
        if mask is not None:
            from agglom.data.masks import MASK_MEMBER, decode_mask, foreground_fraction

            sample[MASK_MEMBER] = bytes(mask)
            if mask_area is None:
                mask_area = foreground_fraction(decode_mask(mask))
        w.write(sample)
        self.sheet.add(split, label, meta["attrs"], mask_area=mask_area if mask is not None else None)

    def close(self, **info: Any) -> Dict[str, Any]:
        for split, w in self._writers.items():
            self.sheet.shards[split] = w.close()
        sheet = self.sheet.build(**info)
        self.output.write_json(self.root / DATASHEET, sheet)
        self.datasheet = sheet
        if self._own:
            self.output.finish()
        return sheet

    def abort(self) -> None:
        for w in self._writers.values():
            w.abort()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is not None:
            self.abort()
        return self.output.__exit__(exc_type, exc, tb) if self._own else False


def read_datasheet(root: os.PathLike) -> Optional[Dict[str, Any]]:
    """``<root>/dataset.json``, or None when there is none; ConfigError naming the file when it is not a datasheet
    (truncated, not JSON, not an object)."""
    from agglom.config.load import ConfigError

    p = Path(root) / DATASHEET
    if not p.is_file():
        return None
    fix = "rewrite it with agglom data pack/synth, or remove it"
    sheet = read_json(p, fix=fix)
    if not isinstance(sheet, dict):
        raise ConfigError(f"{p}: not a datasheet (a JSON object with 'splits'); {fix}")
    return sheet


def _numeric_lines(info: Mapping[str, Any], splits: List[str], w: int) -> List[str]:
    """A numeric attribute with many values, summarised per split (min, median, max) instead of a row per value."""
    summ = info.get("summary", {})
    lines = []
    for stat in ("min", "median", "max"):
        cells = [format(summ[s][stat], "g") if summ.get(s, {}).get("n") else "-" for s in splits]
        lines.append(f"{'  ' + stat:<24}" + "".join(f"{c:>{w}}" for c in cells))
    return lines


def summary_table(sheet: Mapping[str, Any]) -> str:
    """A plain-text table of a datasheet: splits x labels, then each attribute's values per split — a binned
    attribute (``attribute_bins``) per bin, a numeric one with more than
    :data:`agglom.data.patients.MAX_NUMERIC_GROUPS` values as its min, median and max per split."""
    splits = list(sheet.get("splits", {}))
    lines = [f"dataset: {sheet.get('name') or '-'}   source: {sheet.get('source') or '-'}   "
             f"licence: {sheet.get('licence') or '-'}   samples: {sheet.get('samples', 0)}"]
    lab = sheet.get("label", {})
    lines.append(f"label: {lab.get('type', '?')}, {lab.get('num_classes', '?')} classes"
                 + (f" ({', '.join(map(str, lab['names']))})" if lab.get("names") else ""))
    labels = sorted({k for s in splits for k in sheet["splits"][s].get("labels", {})}, key=lambda k: (len(k), k))
    w = max([12] + [len(s) + 2 for s in splits])
    lines.append("")
    lines.append(f"{'':<24}" + "".join(f"{s:>{w}}" for s in splits))
    lines.append(f"{'samples':<24}" + "".join(f"{sheet['splits'][s]['samples']:>{w}}" for s in splits))
    lines.append(f"{'shards':<24}" + "".join(f"{sheet['splits'][s].get('shards', 0):>{w}}" for s in splits))
    for lk in labels:
        lines.append(f"{'label=' + lk:<24}" + "".join(f"{sheet['splits'][s]['labels'].get(lk, 0):>{w}}" for s in splits))
    binned = sheet.get("attribute_bins") or {}
    for a, info in sheet.get("attributes", {}).items():
        if a in binned:
            lines.extend(attribute_lines(a, info, binned[a], splits, w))
            continue
        counts, values = info.get("counts"), info.get("values", [])
        many = info.get("type") == "numeric" and (not counts or len(values) > MAX_NUMERIC_GROUPS)
        n = f"{len(values)} values" if counts else f"more than {MAX_LISTED_NUMERIC_VALUES} values"
        lines.append(f"{a} ({info.get('type')}" + (f", {n})" if many else ")"))
        if many and info.get("summary"):
            lines.extend(_numeric_lines(info, splits, w))
        elif counts:
            for v in values:
                lines.append(f"{'  ' + str(v):<24}" + "".join(f"{counts.get(s, {}).get(str(v), 0):>{w}}" for s in splits))
        lines.append(f"{'  (missing)':<24}" + "".join(f"{info.get('missing', {}).get(s, 0):>{w}}" for s in splits))
    masks = sheet.get("masks")
    if masks:
        ms = masks.get("splits", {})
        lines.append(f"{'masked samples':<24}" + "".join(f"{ms.get(s, {}).get('samples', 0):>{w}}" for s in splits))
        lines.append(f"{'mean mask area':<24}" + "".join(
            f"{'-' if ms.get(s, {}).get('mean_area') is None else format(ms[s]['mean_area'], '.4f'):>{w}}"
            for s in splits))
        for a, per in masks.get("by_attribute", {}).items():
            for v in sorted({v for s in splits for v in per.get(s, {})}):
                cells = [per.get(s, {}).get(v) for s in splits]
                lines.append(f"{'  mask area ' + a + '=' + str(v):<24}" + "".join(
                    f"{'-' if not c or c['mean_area'] is None else format(c['mean_area'], '.4f'):>{w}}" for c in cells))
    if sheet.get("patients"):
        lines.extend(summary_lines(sheet["patients"], splits, w, {a: patient_lines(a, e, splits, w)
                                                                    for a, e in binned.items() if "patients" in e}))
    if sheet.get("skipped"):
        lines.append(f"skipped while writing: {json.dumps(sheet['skipped'])}")
    if sheet.get("split_design"):
        lines.append(f"splits: {sheet['split_design']}")
    return "\n".join(lines)


def iter_shards(root: os.PathLike, split: str) -> Iterable[Path]:
    return sorted((Path(root) / split).glob("*.tar"))


__all__ = ["DatasetWriter", "DatasheetBuilder", "DatasetOutput", "read_datasheet", "write_json_atomic", "summary_table",
           "shard_name", "DATASHEET", "FORMAT", "iter_shards"]
