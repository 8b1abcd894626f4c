"""Attribute tables joined onto images: a CSV keyed by file name, path or sample id.

Two places use it: ``agglom data pack src=FOLDER attrs_csv=FILE`` puts the attributes into each sample (and so
into the datasheet), and ``agglom data join`` turns a CSV into a sidecar for shards that already exist, matched by
sample key or by the source file a sample was packed from — no shard is rewritten. A row's match value is tried
as the sample key, the source path relative to the packed folder, the file name, then the file stem; rows and
samples left unmatched are counted and reported, never dropped silently.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from agglom.config.choices import JOIN_MATCHES as MATCHES
from agglom.data.groups import parse_value
from agglom.data.paths import shown
from agglom.data.patients import PATIENT, leaked_patients


def read_table(path: Path, on: str, attr_cols: Sequence[str] = (), patient_col: Optional[str] = None
               ) -> Dict[str, Dict[str, Any]]:
    """``{match value: {attr: value}}`` from a CSV (empty cells left out; read by :func:`agglom.data.csvfile.read_csv`:
    a byte-order mark is fine, another encoding than UTF-8 is refused by line); ConfigError naming what is wrong.
    ``patient_col``: a column that must exist, whose cell becomes the attribute ``patient`` (the id as written)
    and stays an attribute under its own name only when ``attr_cols`` lists it."""
    from agglom.config.load import ConfigError
    from agglom.data.csvfile import read_csv

    if not Path(path).is_file():
        raise ConfigError(f"attribute table not found: {shown(path)}")
    cols, rows = read_csv(Path(path), "attribute table")
    if on not in cols:
        raise ConfigError(f"attribute table {shown(path)}: no column {on!r} to join on (columns: {cols})")
    wanted = list(attr_cols) or [c for c in cols if c not in (on, patient_col) and c]
    missing = [c for c in wanted + ([patient_col] if patient_col else []) if c not in cols]
    if missing:
        raise ConfigError(f"attribute table {shown(path)}: no column(s) {missing} (columns: {cols})")
    if PATIENT in wanted and patient_col != PATIENT:
        raise ConfigError(f"attribute table {shown(path)}: column {PATIENT!r} is reserved for the patient id; give "
                          f"patient_col={PATIENT} to use it as one, or list the attributes in attr_cols without it")
    table: Dict[str, Dict[str, Any]] = {}
    line: Dict[str, int] = {}
    for ln, r in rows:
        k = (r.get(on) or "").strip()
        if not k:
            continue
        if k in table:
            raise ConfigError(f"attribute table {shown(path)}: {on}={k!r} appears twice (lines {line[k]} and {ln}); the join "
                              "would be ambiguous: keep one row per value")
        table[k], line[k] = {c: parse_value(r[c]) for c in wanted if (r.get(c) or "").strip() != ""}, ln
        if patient_col and (r.get(patient_col) or "").strip():
            table[k][PATIENT] = r[patient_col].strip()
    return table


def candidates(key: str, source: Optional[str], match: str = "auto") -> List[str]:
    """The values a table row may hold for one sample, in the order they are tried."""
    out: List[str] = []
    if match in ("auto", "key"):
        out.append(key)
    if source:
        p = PurePosixPath(source.replace("\\", "/"))
        if match in ("auto", "path"):
            out.append(str(p))
        if match in ("auto", "name"):
            out.append(p.name)
        if match in ("auto", "stem"):
            out.append(p.stem)
    return out


def join(samples: Iterable[Tuple[str, Optional[str]]], table: Mapping[str, Dict[str, Any]], match: str = "auto"
         ) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, Any]]:
    """``(key -> attrs, report)`` for ``(key, source)`` pairs; the report counts matched samples, samples without
    a row and rows without a sample (with a few examples of each)."""
    out: Dict[str, Dict[str, Any]] = {}
    used: set = set()
    no_row: List[str] = []
    for key, source in samples:
        hit = next((c for c in candidates(key, source, match) if c in table), None)
        if hit is None:
            no_row.append(key)
            continue
        out[key] = dict(table[hit])
        used.add(hit)
    unused = [k for k in table if k not in used]
    report = {"matched": len(out), "samples_without_row": len(no_row), "rows_without_sample": len(unused),
              "examples": {"samples_without_row": no_row[:5], "rows_without_sample": unused[:5]}}
    return out, report


def shard_sources(cfg: Any, splits: Sequence[str], with_split: bool = False) -> List[Tuple[str, Optional[str]]]:
    """``(key, source)`` of every sample in the splits' shards, from the json members only; ``(key, source,
    split)`` with ``with_split``."""
    from agglom.data.counts import SkipCounts
    from agglom.data.limits import sample_json
    from agglom.data.shards import read_shard, shard_urls

    out: List[Tuple[str, Optional[str]]] = []
    counts = SkipCounts()
    for split in splits:
        for url in shard_urls(cfg, split):
            for s in read_shard(url, counts, lambda f: f.endswith(".json")):
                source = None
                if "json" in s:
                    try:
                        meta = sample_json(s["json"])
                        source = meta.get("source") if isinstance(meta, dict) else None
                    except (ValueError, UnicodeDecodeError):
                        pass
                out.append((s["__key__"], source, split) if with_split else (s["__key__"], source))
    return out


def write_attr_sidecar(path: Path, values: Mapping[str, Mapping[str, Any]], meta: Mapping[str, Any]) -> None:
    """``{"samples": {key: {attr: value}}, "meta": ...}`` (a sidecar `data.sidecars` reads), written atomically. An
    existing file at ``path`` is replaced only when it is such a sidecar (agglom's): anything else there is the
    user's, and refused; an OSError (read-only folder, full disk) is a one-line ReadableError."""
    from agglom.data.jsonfile import write_json_atomic
    from agglom.data.manifest import write_failure

    path = Path(path)
    _check_sidecar_target(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"samples": dict(values), "meta": dict(meta)}, indent=1, sort_keys=True)
    except OSError as e:
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink()
        raise write_failure(e, path) from None


def _check_sidecar_target(path: Path) -> None:
    """Refuse an ``out`` that is a folder, or a file that is not a sidecar this command wrote."""
    from agglom.config.load import ConfigError
    from agglom.data.jsonfile import peek_json
    from agglom.data.sidecars import MAX_SIDECAR_JSON_BYTES

    if path.is_dir():
        raise ConfigError(f"out={shown(path)} is a folder; give the sidecar's file name (e.g. {shown(path / 'attrs.json')})")
    if not path.exists() and not path.is_symlink():
        return
    old = peek_json(path, max_bytes=MAX_SIDECAR_JSON_BYTES)  # what data.sidecars could not read is not one
    if not (isinstance(old, dict) and isinstance(old.get("samples"), dict) and isinstance(old.get("meta"), dict)
            and "csv" in old["meta"]):
        raise ConfigError(f"out={shown(path)} exists and is not a sidecar agglom data join wrote; choose another out= (it "
                          "is left as it is)")


def join_onto_shards(root: str, shards: Optional[str], table_csv: str, on: str, match: str = "auto",
                     attr_cols: Sequence[str] = (), splits: Sequence[str] = ("train", "val", "test"),
                     out: Optional[str] = None, patient_col: Optional[str] = None) -> Tuple[Path, Dict[str, Any]]:
    """`agglom data join`: the attribute table ``table_csv`` (keyed by column ``on``) matched onto the samples of existing
    shards (``root/<split>/*.tar`` or the ``shards`` pattern) and written as a sidecar (default
    ``<dataset folder>/<csv stem>_attrs.json``); returns (sidecar path, match report). No shard is rewritten.
    ``patient_col``: the table's patient column, written as each sample's ``patient``; the report then counts the
    patients and those the existing shards hold in two splits (``patients_in_two_splits``)."""
    from omegaconf import OmegaConf

    from agglom.config.load import ConfigError
    from agglom.config.schema import Recipe
    from agglom.data.shards import data_home, shard_pattern

    if not table_csv:
        raise ConfigError("give csv=FILE (the attribute table) and on=COLUMN (what it is keyed by)")
    rcfg = OmegaConf.structured(Recipe)
    rcfg.data.root, rcfg.data.shards = root, shards
    found = [s for s in splits if shard_pattern(rcfg, s) or (Path(root) / s).is_dir()]
    if shards and "{split}" not in shards:
        found = [rcfg.data.train_split]
    if not found:
        raise ConfigError(f"no split folders {list(splits)} under {root} (or give shards=)")
    path = Path(out) if out else data_home(rcfg) / f"{Path(table_csv).stem}_attrs.json"
    _check_sidecar_target(path)  # before the shards are read: a refusal costs nothing
    table = read_table(Path(table_csv), on, list(attr_cols), patient_col)
    samples = shard_sources(rcfg, found, with_split=True)
    values, report = join([(k, src) for k, src, _ in samples], table, match)
    if patient_col:
        pids = [values.get(k, {}).get(PATIENT) for k, _, _ in samples]
        report["patients"] = len({p for p in pids if p})
        report["patients_in_two_splits"] = len(leaked_patients(pids, [s for _, _, s in samples]))
    if not values:
        raise ConfigError(f"no sample matched a row of {table_csv} on {on!r} (match={match}); e.g. samples "
                          f"{report['examples']['samples_without_row']}, rows {report['examples']['rows_without_sample']}")
    write_attr_sidecar(path, values, {"csv": str(Path(table_csv).resolve()), "on": on, "match": match, "splits": found,
                                      "patient_col": patient_col, **report})
    return path, report


__all__ = ["join_onto_shards", "read_table", "candidates", "join", "shard_sources", "write_attr_sidecar", "MATCHES"]
