"""Sidecar attribute files: per-sample attributes kept outside the shards, merged into samples and datasheet.

Sidecars (``cfg.data.sidecars``) add or override attributes by sample key without rewriting the tars, e.g. the
proxy groups that `agglom curate` writes (:mod:`agglom.curate.sidecar`). They live here, apart from the
WebDataset streams of :mod:`agglom.data.readers` (which re-exports both functions), because they are plain file
parsing, used on their own too (:func:`agglom.data.readers.group_indexer` over a datasheet with sidecars):

- :func:`load_sidecars` reads JSON/CSV sidecar files into ``key -> {attr: value}``;
- :func:`datasheet_with_sidecars` lists the sidecar attributes' values in a copy of the datasheet, so a
  :class:`~agglom.data.groups.GroupIndexer` can group by them — all but ``patient`` (the patient id that
  `agglom data join patient_col=` writes: no group attribute, agglom/data/patients.py).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from agglom.data.groups import fmt_value, parse_value
from agglom.data.patients import PATIENT

__all__ = ["load_sidecars", "datasheet_with_sidecars", "MAX_SIDECAR_JSON_BYTES"]

# A JSON sidecar is parsed whole (a Python dict costs ~10x its file): 256 MiB holds millions of samples'
# attributes; a larger table goes in as a CSV sidecar, read row by row.
MAX_SIDECAR_JSON_BYTES = 256 << 20


def load_sidecars(paths: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """key -> {attr: value} from sidecar files; later files override earlier ones. Accepted: the
    ``agglom.sidecar/1`` JSON that `agglom curate` writes (``{"schema", "attr", "values": {key: value}}``),
    plain JSON ``{key: {attr: value}}`` / ``{"samples": ...}`` / a list of rows with ``key``, or CSV with a
    ``key`` column plus attribute columns. A JSON file that is not a regular file, is over
    :data:`MAX_SIDECAR_JSON_BYTES` or nests too deeply is refused unread (:func:`agglom.data.jsonfile.read_json`)."""
    from agglom.config.load import ConfigError
    from agglom.data.jsonfile import read_json
    from agglom.data.paths import shown

    out: Dict[str, Dict[str, Any]] = {}
    for p in paths or []:
        path = Path(p)
        if path.exists() and not path.is_file():
            raise ConfigError(f"data.sidecars: {shown(p)} is not a regular file (a folder, a device or a link to "
                              "one); give a JSON or CSV sidecar file")
        if not path.is_file():
            raise ConfigError(f"data.sidecars: file not found: {shown(p)}")
        try:
            if path.suffix.lower() == ".csv":
                from agglom.data.csvfile import read_csv

                _, lines = read_csv(path, "data.sidecars:")  # BOM and encoding handled, by line
                for _, row in lines:
                    key = row.pop("key", None) or row.pop("__key__", None)
                    if not key:
                        raise ValueError("a CSV sidecar needs a 'key' column")
                    out.setdefault(key, {}).update({k: parse_value(v) for k, v in row.items() if v not in ("", None)})
            else:
                obj = read_json(path, max_bytes=MAX_SIDECAR_JSON_BYTES,
                                fix="data.sidecars takes a JSON sidecar {key: {attr: value}} (agglom data join, "
                                    "agglom curate) or a CSV with a key column")
                if isinstance(obj, dict) and str(obj.get("schema", "")).startswith("agglom.sidecar/"):
                    attr = obj.get("attr")  # `agglom curate`: {"schema", "attr", "values": {key: value}, "meta"}
                    if not isinstance(attr, str) or not attr or not isinstance(obj.get("values"), dict):
                        raise ValueError("an agglom.sidecar file needs 'attr' and a 'values' mapping")
                    obj = {k: {attr: v} for k, v in obj["values"].items()}
                elif isinstance(obj, dict) and isinstance(obj.get("samples"), (dict, list)):
                    obj = obj["samples"]
                if isinstance(obj, list):
                    obj = {r["key"]: {k: v for k, v in r.items() if k != "key"} for r in obj}
                if not isinstance(obj, dict):
                    raise ValueError("expected a mapping key -> {attr: value}")
                for key, attrs in obj.items():
                    if not isinstance(attrs, dict):
                        raise ValueError(f"entry {key!r} is not a mapping")
                    out.setdefault(str(key), {}).update({k: v for k, v in attrs.items() if v is not None})
        except ConfigError as e:
            if str(e).startswith("data.sidecars"):
                raise
            raise ConfigError(f"data.sidecars: {e}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"data.sidecars: cannot read {shown(p)}: {e}") from e
    return out


def datasheet_with_sidecars(datasheet: Optional[Mapping[str, Any]], sidecars: Mapping[str, Mapping[str, Any]]
                            ) -> Optional[Dict[str, Any]]:
    """A copy of the datasheet whose ``attributes`` also list the sidecar attributes' values (not the patient id)."""
    if not sidecars:
        return dict(datasheet) if datasheet else None
    sheet = json.loads(json.dumps(datasheet)) if datasheet else {}
    attrs = sheet.setdefault("attributes", {})
    seen: Dict[str, set] = {}
    for row in sidecars.values():
        for a, v in row.items():
            if a != PATIENT:
                seen.setdefault(a, set()).add(fmt_value(v))
    for a, vals in seen.items():
        entry = attrs.setdefault(a, {"type": "categorical", "values": []})
        if entry.get("type") == "numeric" and "values" not in entry:
            continue
        entry["type"] = "categorical"
        entry["values"] = sorted(set(map(fmt_value, entry.get("values", []))) | vals)
        entry["source"] = "sidecar"
    return sheet
