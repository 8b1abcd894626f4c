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
    """Write JSON to a temporary file beside ``path``, fsync, then rename into place (an OSError: one line)."""
    return write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def write_text_atomic(path: os.PathLike, text: str) -> Path:
    """``text`` at ``path`` through a fsynced temporary file; a full disk or a read-only folder is a one-line
    ReadableError (:func:`agglom.data.manifest.write_failure`) and leaves no temporary file."""
    from agglom.data.manifest import write_failure

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp.is_file():
            tmp.unlink()
        raise write_failure(e, path) from None
    return path


def _schema_of(path: Path) -> Optional[str]:
    """The ``schema`` of the JSON file at ``path``, or None (missing, not a regular file, too large, not JSON)."""
    from agglom.data.jsonfile import peek_json
    from agglom.data.sidecars import MAX_SIDECAR_JSON_BYTES

    obj = peek_json(path, max_bytes=MAX_SIDECAR_JSON_BYTES)
    return str(obj.get("schema")) if isinstance(obj, dict) else None


def check_targets(out: os.PathLike, report_schema: str = "agglom.curate_report/") -> None:
    """Refuse, before any work, to write over what is not agglom's: ``out`` must be a new path or a sidecar
    (``agglom.sidecar/*``), and the ``curate_report.json`` / ``.md`` beside it new or a curate report."""
    from agglom.config.load import ConfigError

    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"out={out} is a folder; give the sidecar's file name (e.g. {out / 'proxy_groups.json'})")
    if out.exists() and not (_schema_of(out) or "").startswith("agglom.sidecar/"):
        raise ConfigError(f"out={out} exists and is not an agglom sidecar; choose another out= (it is left as it is)")
    report = out.parent / "curate_report.json"
    ours = (_schema_of(report) or "").startswith(report_schema)
    for p in (report, out.parent / "curate_report.md"):
        if p.exists() and not ours:
            raise ConfigError(f"{p} exists and is not a report agglom curate wrote; move it, or give out= in "
                              "another folder (the report is written beside the sidecar)")


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


__all__ = ["SIDECAR_SCHEMA", "SidecarError", "write_sidecar", "write_json_atomic", "write_text_atomic", "check_targets"]
