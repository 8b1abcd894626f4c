"""Reading cached teacher features by sample key (keys checked, never zipped blindly), refusing stale caches.

:func:`teacher_output` gives a teacher's outputs for a batch whether it is cached or runs online; evaluation
(:mod:`agglom.eval`) and the teacher audit (:mod:`agglom.distill.audit`) both read teachers through it.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from agglom.cache.codec import unpack
from agglom.cache.writer import MANIFEST_SCHEMA, MAX_MANIFEST_BYTES, cache_name, preprocessing_of
from agglom.config.load import ConfigError
from agglom.data.jsonfile import read_json
from agglom.data.limits import unsafe_key
from agglom.data.tarstream import index as tar_index


class StaleCacheError(ConfigError):
    """The cache was made for another card, weights or preprocessing: rebuild it with `agglom cache`."""


class CacheKeyError(StaleCacheError):
    """A sample key the cache has no entry for (the image shards changed since the cache was written)."""


def open_cache(path: str, teacher: str, cfg: Any, card_digest: str, split: Any = "train") -> "CachedTeacher":
    """The cache of `teacher` under `path` (the cache root or the teacher's own folder), checked against the card
    digest and the recipe's preprocessing, and (unless `split` is None) against the image shards of `split` (a split
    name or a list of them; default: the recipe's training split): every image shard must have its cache shard."""
    root = Path(path)
    teacher = cache_name(teacher)
    if (root / teacher / "manifest.json").exists():
        root = root / teacher
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():  # one that is there but not a regular file is named so by read_json
        found = sorted(p.parent.name for p in Path(path).glob("*/manifest.json"))
        raise ConfigError(f"teachers[{teacher}].cache: no manifest.json in {path} nor in {Path(path) / teacher}"
                          + (f" (caches found there: {', '.join(found)})" if found else "")
                          + "; write it with `agglom cache recipe=... cache.out=DIR` and give the same DIR")
    try:  # one line for a file that is not JSON, not a regular file, too large or nested too deeply
        m = read_json(manifest_path, fix="rebuild the cache with `agglom cache`", max_bytes=MAX_MANIFEST_BYTES)
    except StaleCacheError:
        raise
    except ConfigError as e:
        raise StaleCacheError(f"cache {root}: {e}") from None
    if not isinstance(m, dict):
        raise StaleCacheError(f"cache {root}: manifest.json is not a JSON object; rebuild it with `agglom cache`")
    if m.get("schema") != MANIFEST_SCHEMA:
        raise StaleCacheError(f"cache {root}: schema {m.get('schema')!r}, expected {MANIFEST_SCHEMA}")
    if m.get("teacher") != teacher:
        raise StaleCacheError(f"the feature cache at {root} belongs to teacher {m.get('teacher')!r}, not {teacher!r}; "
                              f"give the cache root (it holds one folder per teacher) or {teacher!r}'s own folder")
    problems = []
    if m.get("card_digest") != card_digest:
        problems.append(f"card digest {str(m.get('card_digest'))[:12]} != current {card_digest[:12]} "
                        "(card or weights changed)")
    want = preprocessing_of(cfg)
    for k, v in want.items():
        if m.get("preprocessing", {}).get(k) != v:
            problems.append(f"preprocessing.{k} {m.get('preprocessing', {}).get(k)!r} != {v!r}")
    if problems:
        raise StaleCacheError(f"stale feature cache for {teacher} at {root}: " + "; ".join(problems) +
                              ". Rebuild it: agglom cache recipe=<recipe> (it is refused rather than silently used)")
    if not m.get("complete"):
        raise StaleCacheError(f"feature cache for {teacher} at {root} is incomplete; re-run `agglom cache` to finish it")
    for sp in ([] if split is None else [split] if isinstance(split, str) else list(split)):
        _check_coverage(root, m, cfg, cfg.data.train_split if sp == "train" else sp)
    try:
        return CachedTeacher(root, m)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a manifest edited or damaged by hand
        raise StaleCacheError(f"cache {root}: manifest.json does not describe a cache ({type(e).__name__}: {e}); "
                              "rebuild it with `agglom cache`") from None


def _check_coverage(root: Path, m: Dict[str, Any], cfg: Any, split: str) -> None:
    from agglom.cache.writer import shard_fingerprint
    from agglom.data.readers import shard_urls

    try:
        urls = shard_urls(cfg, split)
    except (ConfigError, FileNotFoundError, ValueError):
        return  # no image shards to compare with: the readers report that themselves
    names = [Path(u).name for u in urls]
    entry = m.get("splits", {}).get(split) or {}
    cached = entry.get("shards", {})
    missing = [n for n in names if n not in cached or not (root / split / n).is_file()]
    if missing:
        raise StaleCacheError(f"feature cache for {m.get('teacher')} at {root} does not cover split {split!r}: "
                              f"{len(missing)} of {len(names)} image shard(s) not cached ({', '.join(missing[:3])}"
                              f"{', ...' if len(missing) > 3 else ''}); run `agglom cache recipe=<recipe> "
                              f"cache.splits=[{split}]`")
    prints = entry.get("fingerprints") or {}
    changed = [n for u, n in zip(urls, names) if n in prints and os.path.exists(u) and prints[n] != shard_fingerprint(u)]
    if changed:
        raise StaleCacheError(f"feature cache for {m.get('teacher')} at {root} was written for other images: split "
                              f"{split!r} shard(s) {', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''} changed "
                              "since (regenerated data?); rebuild it with `agglom cache recipe=<recipe>`")


class CachedTeacher:
    """Key -> (summary, spatial) from the cache shards, through an index of tar member offsets."""

    def __init__(self, root: Path, manifest: Dict[str, Any]) -> None:
        self.root, self.manifest = root, manifest
        self.summary_dim, self.spatial_dim = int(manifest["summary_dim"]), int(manifest["spatial_dim"])
        self.grid: Tuple[int, int] = tuple(manifest["grid"])
        self.spatial_shape = (self.spatial_dim, *self.grid)
        self.index: Dict[str, Tuple[Path, int, int]] = {}
        for split, entry in manifest["splits"].items():
            for shard in entry["shards"]:
                self._index_shard(split, shard)
        self._files: Dict[Path, Any] = {}
        self._pid = os.getpid()  # the process self._files belong to

    def _index_shard(self, split: str, shard: str) -> None:
        """Add one cache shard's members to the index (headers only, :func:`agglom.data.tarstream.index`). Names
        from the manifest and the tar are looked up, never used as paths: a split or shard name that is not a
        plain file name, and a member whose name is not a safe key (``..``, absolute), are refused or left out."""
        if not all(isinstance(n, str) and n and n not in (".", "..") and Path(n).name == n for n in (split, shard)):
            raise StaleCacheError(f"cache {self.root}: manifest.json names shard {split!r}/{shard!r}, which is not a "
                                  "file name in the cache folder; rebuild it with `agglom cache`")
        path = self.root / split / shard
        try:
            members = tar_index(str(path), file_offsets=True)
        except (tarfile.TarError, OSError, ValueError) as e:
            raise StaleCacheError(f"feature cache {self.root}: {split}/{shard} cannot be read ({e}); rebuild it with "
                                  "`agglom cache`") from None
        for name, (offset, size) in members.items():
            if name.endswith(".feat") and unsafe_key(name[: -len(".feat")]) is None:
                self.index[name] = (path, offset, size)

    def _read(self, name: str) -> bytes:
        """A member's bytes. File handles belong to the process that opened them: a data worker forked from the
        main process would otherwise share the main process's descriptors, and with them one file offset, so
        concurrent seek + read pairs in two workers read each other's bytes. Reads are positional (``pread``)
        where the OS has it, and a process that did not open the handles opens its own."""
        path, offset, size = self.index[name]
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = open(path, "rb")
        if hasattr(os, "pread"):
            data = os.pread(f.fileno(), size, offset)
        else:  # pragma: no cover - no pread (Windows): the handle is this process's own
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise StaleCacheError(f"feature cache {self.root}: {path.name} is shorter than its index says "
                                  f"({name}); rebuild it with `agglom cache`")
        return data

    def get(self, key: str) -> Tuple[np.ndarray, np.ndarray]:
        """(summary [Ds], spatial [C, h, w]) of one sample, as float32."""
        name = f"{key}.feat"
        if name not in self.index:
            raise CacheKeyError(f"feature cache {self.root} has no entry for sample {key!r}; the image shards "
                                "changed since it was written: rebuild it with `agglom cache`")
        try:
            return unpack(self._read(name), self.manifest["dtype"], self.summary_dim, self.spatial_shape)
        except (ValueError, KeyError) as e:  # an entry of the wrong size, a dtype the manifest should not hold
            raise StaleCacheError(f"feature cache {self.root}: the entry for sample {key!r} does not match the "
                                  f"manifest ({e}); rebuild it with `agglom cache`") from None

    def lookup(self, keys: Sequence[str]) -> Dict[str, torch.Tensor]:
        got = [self.get(k) for k in keys]
        summ = np.stack([g[0] for g in got])
        spat = np.stack([g[1] for g in got])
        return {"summary": torch.from_numpy(summ), "spatial": torch.from_numpy(spat)}

    def keys(self) -> List[str]:
        return sorted(n[: -len(".feat")] for n in self.index if n.endswith(".feat"))

    def __getstate__(self):  # file handles are per process
        d = dict(self.__dict__)
        d["_files"] = {}
        return d


#: batch keys under which :class:`WorkerCacheRead` puts a cached teacher's features: ``cached/<teacher>/summary``
CACHED_PREFIX = "cached/"


class WorkerCacheRead:
    """Reads the cached teachers' features inside the data workers, so they arrive with the batch (off the training
    step's critical path) as ``cached/<teacher>/{summary,spatial}`` tensors; picklable (file handles are opened per
    worker). A key the cache lacks, or a damaged entry, leaves the batch without that teacher's entries: the main
    process then reads it and raises the clear :class:`CacheKeyError` / :class:`StaleCacheError` there rather than
    as a worker traceback."""

    def __init__(self, teachers: Dict[str, CachedTeacher]) -> None:
        self.teachers = dict(teachers)

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        for name, teacher in self.teachers.items():
            try:
                feats = teacher.lookup(batch["key"])
            except StaleCacheError:  # a missing key or a damaged entry: the main process says which
                continue
            for kind, value in feats.items():
                batch[f"{CACHED_PREFIX}{name}/{kind}"] = value
        return batch


def cached_from_batch(batch: Dict[str, Any], name: str) -> Optional[Dict[str, torch.Tensor]]:
    """The features :class:`WorkerCacheRead` attached to ``batch`` for teacher ``name`` (None if it did not)."""
    key = f"{CACHED_PREFIX}{name}/summary"
    if key not in batch:
        return None
    return {"summary": batch[key], "spatial": batch[f"{CACHED_PREFIX}{name}/spatial"]}


def teacher_output(teacher: Any, x: torch.Tensor, keys: Sequence[str]) -> Any:
    """A teacher's (summary, spatial) for a batch: read from its feature cache by key when it is a cached
    teacher (:class:`~agglom.cache.reader.CachedTeacher`), else computed online from the images."""
    if hasattr(teacher, "lookup"):
        from teachers import TeacherOutput

        t = teacher.lookup(list(keys))
        return TeacherOutput(summary=t["summary"].to(x.device).float(), spatial=t["spatial"].to(x.device).float())
    return teacher(x)
