"""Proxy-group sidecars: a JSON file keyed by sample key that adds one attribute to every sample it names.

Format (``agglom.sidecar/1``)::

    {"schema": "agglom.sidecar/1", "attr": "proxy", "groups": ["c0", "c1", ...],
     "meta": {...free-form provenance: method, k, encoder, ...},
     "values": {"<sample key>": "c0", ...}}

which the data layer's one sidecar reader (``agglom.data.sidecars.load_sidecars``) reads as ``key -> {attr: value}``.
`agglom curate` writes one; a recipe lists it in ``data.sidecars`` and the data layer merges it into each
sample's ``attrs`` (``attrs["proxy"] = "c0"``), so proxy groups are used like any other attribute
(``groups.by=proxy``, eval reports). A sample the sidecar does not name simply lacks the attribute (it falls
into the explicit "unknown" group). This module only writes them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

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


__all__ = ["SIDECAR_SCHEMA", "SidecarError", "write_sidecar", "write_json_atomic"]
