"""Proxy-group sidecars: a JSON file keyed by sample key that adds one attribute to every sample it names.

Format (``agglom.sidecar/1``)::

    {"schema": "agglom.sidecar/1", "attr": "proxy", "groups": ["c0", "c1", ...],
     "meta": {...free-form provenance: method, k, encoder, ...},
     "values": {"<sample key>": "c0", ...}}

which the data layer's sidecar reader (``agglom.data.readers.load_sidecars``) reads as ``key -> {attr: value}``.
`agglom curate` writes one; a recipe lists it in ``data.sidecars`` and the data layer merges it into each
sample's ``attrs`` (``attrs["proxy"] = "c0"``), so proxy groups are used like any other attribute
(``groups.by=proxy``, eval reports). A sample the sidecar does not name simply lacks the attribute (it falls
into the explicit "unknown" group). :func:`load_sidecar` returns ``key -> {attr: value}``; :func:`merge_sidecars`
combines several files (a later file may not redefine an attribute value an earlier one set for a key).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

SIDECAR_SCHEMA = "agglom.sidecar/1"


class SidecarError(ValueError):
    """A sidecar file is missing or malformed; the message names the file."""


def write_json_atomic(path: os.PathLike, obj: Any) -> Path:
    """Write JSON to a temporary file beside ``path``, fsync, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_sidecar(path: os.PathLike, attr: str, values: Mapping[str, Any],
                  meta: Optional[Mapping[str, Any]] = None) -> Path:
    """Write a sidecar atomically: ``values`` maps sample key -> attribute value (stored as a string)."""
    if not attr or not isinstance(attr, str):
        raise SidecarError(f"sidecar attribute name must be a non-empty string, got {attr!r}")
    vals = {str(k): str(v) for k, v in values.items()}
    obj = {"schema": SIDECAR_SCHEMA, "attr": attr, "groups": sorted(set(vals.values()), key=_natural),
           "meta": dict(meta or {}), "values": vals}
    return write_json_atomic(path, obj)


def _natural(s: str) -> tuple:
    """Sort "c2" before "c10": (prefix, trailing number)."""
    head = s.rstrip("0123456789")
    tail = s[len(head):]
    return (head, int(tail) if tail else -1, s)


def read_sidecar(path: os.PathLike) -> Dict[str, Any]:
    """The validated sidecar object (``schema``, ``attr``, ``groups``, ``meta``, ``values``)."""
    path = Path(path)
    if not path.is_file():
        raise SidecarError(f"sidecar not found: {path} (write one with `agglom curate`)")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SidecarError(f"sidecar {path} is not valid JSON: {e}") from e
    if not isinstance(obj, dict) or obj.get("schema") != SIDECAR_SCHEMA:
        got = obj.get("schema") if isinstance(obj, dict) else type(obj).__name__
        raise SidecarError(f"sidecar {path}: expected schema {SIDECAR_SCHEMA!r}, got {got!r}")
    if not isinstance(obj.get("attr"), str) or not obj["attr"]:
        raise SidecarError(f"sidecar {path}: 'attr' must be a non-empty string")
    if not isinstance(obj.get("values"), dict):
        raise SidecarError(f"sidecar {path}: 'values' must be a mapping of sample key -> value")
    return obj


def load_sidecar(path: os.PathLike) -> Dict[str, Dict[str, str]]:
    """``key -> {attr: value}`` for every sample the sidecar names."""
    obj = read_sidecar(path)
    attr = obj["attr"]
    return {str(k): {attr: str(v)} for k, v in obj["values"].items()}


def merge_sidecars(paths: Iterable[os.PathLike]) -> Dict[str, Dict[str, str]]:
    """Combine several sidecars into ``key -> {attr: value, ...}``; conflicting values for one key raise."""
    out: Dict[str, Dict[str, str]] = {}
    for p in paths:
        for key, attrs in load_sidecar(p).items():
            cur = out.setdefault(key, {})
            for a, v in attrs.items():
                if a in cur and cur[a] != v:
                    raise SidecarError(f"sidecar {p}: key {key!r} sets {a}={v!r}, an earlier sidecar set {cur[a]!r}")
                cur[a] = v
    return out


def apply_sidecars(key: str, attrs: Mapping[str, Any], table: Mapping[str, Mapping[str, str]]) -> Dict[str, Any]:
    """``attrs`` with the sidecar attributes for ``key`` added (sidecar values win over the shard's)."""
    extra = table.get(key)
    return {**attrs, **extra} if extra else dict(attrs)


__all__ = ["SIDECAR_SCHEMA", "SidecarError", "write_sidecar", "read_sidecar", "load_sidecar", "merge_sidecars",
           "apply_sidecars", "write_json_atomic"]
