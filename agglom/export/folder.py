"""Writing an export folder (`agglom export`, `agglom finetune`'s teacher export) without ever deleting what is not
agglom's.

An export is staged in a hidden folder beside ``out`` (``.<out>.tmp-<pid>``, this process's own), then renamed into
place, so a crash never leaves a half-written export at ``out``; a failure removes the staging folder. Before
anything is written, ``out`` is checked:

- missing, or an empty folder: written;
- a file: refused (give a folder path);
- a folder holding an agglom export — its marker file: ``agglom.json`` (schema ``agglom.export/*``, `agglom
  export`) or ``finetune.json`` (``agglom.finetune/*``, `agglom finetune`) — is replaced with ``force=true``
  (refused without). The marker lists the files the export wrote (``files``); a file there that it does not list
  (a user's notes, a copied checkpoint) refuses the replacement, naming it. `agglom eval <export>` writes its report
  into ``<export>/eval/``, and `agglom eval <export>/student.onnx` into ``<export>/eval-student/``: agglom's too,
  and replaced with the export it evaluated. An export written before markers
  listed their files is taken whole;
- any other folder: refused, naming what is in it.

OSErrors (read-only folder, full disk) are one-line ReadableErrors (:func:`agglom.data.manifest.write_failure`).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

MARKERS = {"agglom.json": "agglom.export/", "finetune.json": "agglom.finetune/"}


def _schema(path: Path) -> Optional[Dict[str, Any]]:
    """The marker file's JSON object, or None (missing, not a regular file, too large, not JSON, nested too deeply)."""
    from agglom.data.jsonfile import peek_json

    obj = peek_json(path)
    return obj if isinstance(obj, dict) else None


def export_marker(out: Path) -> Optional[Dict[str, Any]]:
    """The marker of the agglom export in ``out`` (its parsed JSON), or None when ``out`` holds none."""
    for name, prefix in MARKERS.items():
        m = _schema(out / name)
        if m is not None and str(m.get("schema", "")).startswith(prefix):
            return m
    return None


def listing(folder: Path) -> List[str]:
    """Every file under ``folder``, relative and '/'-separated, sorted: what a marker's ``files`` records."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def _foreign(out: Path, marker: Dict[str, Any]) -> List[str]:
    listed = marker.get("files")
    if not isinstance(listed, list):
        return []  # an export from before markers listed files: the marker says the folder is agglom's
    return [f for f in listing(out) if f not in listed and not _evaluated(out, f)]


def _evaluated(out: Path, rel: str) -> bool:
    """Whether ``rel`` lies in a report folder `agglom eval` wrote into the export: ``eval/`` (the export's) or
    ``eval-<stem>/`` (an ONNX graph's, :func:`agglom.eval.onnx_encoder.default_out`), holding an agglom.eval report."""
    top = rel.split("/", 1)[0]
    if "/" not in rel or not (top == "eval" or top.startswith("eval-")):
        return False
    return str((_schema(out / top / "report.json") or {}).get("schema", "")).startswith("agglom.eval/")


def check_target(out: Path, force: bool) -> None:
    """Refuse an ``out`` that is not agglom's to replace (see the module); ConfigError naming what is there."""
    from agglom.config.load import ConfigError

    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"out={out} is a file, not a folder; give the path of a folder for the export")
    if not out.exists() or not any(out.iterdir()):
        return
    marker = export_marker(out)
    if marker is None:
        names = sorted(p.name for p in out.iterdir())
        raise ConfigError(f"out={out} holds files that are not an agglom export ({', '.join(names[:4])}"
                          f"{' ...' if len(names) > 4 else ''}); choose another out= or empty the folder")
    if not force:
        raise ConfigError(f"out={out} holds an agglom export; pass force=true to replace it")
    foreign = _foreign(out, marker)
    if foreign:
        raise ConfigError(f"out={out} holds files the export there did not write ({', '.join(foreign[:4])}"
                          f"{' ...' if len(foreign) > 4 else ''}); move them out, then rerun (force=true replaces "
                          "only an export agglom wrote)")


def staging_path(out: Path) -> Path:
    """A fresh, not yet existing staging folder beside ``out`` (its parent is created, and the folder checked to be
    writable)."""
    from agglom.data.manifest import write_failure

    out = Path(out)
    tmp, n = out.with_name(f".{out.name}.tmp-{os.getpid()}"), 0
    while tmp.exists():
        n += 1
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{n}")
    try:  # a read-only folder is refused here, before the export's work
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        tmp.rmdir()
    except OSError as e:
        raise write_failure(e, tmp) from None
    return tmp


def publish(tmp: Path, out: Path) -> Path:
    """Rename the staged folder to ``out``; a previous export there (checked by :func:`check_target`) is moved
    aside first and removed only once the new one is in place."""
    from agglom.data.manifest import write_failure

    old = out.with_name(f".{out.name}.old-{os.getpid()}") if out.exists() else None
    try:
        if old is not None:
            os.replace(out, old)
        os.replace(tmp, out)
    except OSError as e:
        if old is not None and old.exists() and not out.exists():
            os.replace(old, out)
        raise write_failure(e, out) from None
    if old is not None:
        shutil.rmtree(old)
    return out


def discard(tmp: Path) -> None:
    """Remove a staging folder this process created (after a failure)."""
    shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["check_target", "staging_path", "publish", "discard", "export_marker", "listing", "MARKERS"]
