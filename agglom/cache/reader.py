"""Reading cached teacher features by sample key (keys checked, never zipped blindly), refusing stale caches."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from agglom.cache.codec import decode, npy_load
from agglom.cache.writer import MANIFEST_SCHEMA, preprocessing_of
from agglom.config.load import ConfigError


class StaleCacheError(ConfigError):
    """The cache was made for another card, weights or preprocessing: rebuild it with `agglom cache`."""


def open_cache(path: str, teacher: str, cfg: Any, card_digest: str) -> "CachedTeacher":
    root = Path(path)
    if (root / teacher / "manifest.json").is_file():
        root = root / teacher
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise ConfigError(f"teachers[{teacher}].cache: no manifest.json under {path}; run `agglom cache recipe=...`")
    m = json.loads(manifest_path.read_text())
    if m.get("schema") != MANIFEST_SCHEMA:
        raise StaleCacheError(f"cache {root}: schema {m.get('schema')!r}, expected {MANIFEST_SCHEMA}")
    problems = []
    if m.get("teacher") != teacher:
        problems.append(f"teacher {m.get('teacher')!r} != {teacher!r}")
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
    return CachedTeacher(root, m)


class CachedTeacher:
    """Key -> (summary, spatial) from the cache shards, through an index of tar member offsets."""

    def __init__(self, root: Path, manifest: Dict[str, Any]) -> None:
        self.root, self.manifest = root, manifest
        self.summary_dim, self.spatial_dim = int(manifest["summary_dim"]), int(manifest["spatial_dim"])
        self.grid: Tuple[int, int] = tuple(manifest["grid"])
        self.index: Dict[str, Tuple[Path, int, int]] = {}
        for split, entry in manifest["splits"].items():
            for shard in entry["shards"]:
                path = root / split / shard
                with tarfile.open(path) as tar:
                    for member in tar.getmembers():
                        self.index[member.name] = (path, member.offset_data, member.size)
        self._files: Dict[Path, Any] = {}

    def _read(self, name: str) -> np.ndarray:
        path, offset, size = self.index[name]
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = open(path, "rb")
        f.seek(offset)
        return npy_load(f.read(size))

    def _get(self, key: str, kind: str) -> np.ndarray:
        base = f"{key}.{kind}"
        if f"{base}.npy" not in self.index:
            raise KeyError(f"feature cache {self.root} has no entry for sample {key!r} ({kind}); the image shards "
                           "changed since it was written: rebuild it with `agglom cache`")
        parts = {"": self._read(f"{base}.npy")}
        if f"{base}_scale.npy" in self.index:
            parts["_scale"] = self._read(f"{base}_scale.npy")
        return decode(parts, 0)

    def lookup(self, keys: Sequence[str]) -> Dict[str, torch.Tensor]:
        summ = np.stack([self._get(k, "summary") for k in keys])
        spat = np.stack([self._get(k, "spatial") for k in keys])
        return {"summary": torch.from_numpy(summ), "spatial": torch.from_numpy(spat)}

    def keys(self) -> List[str]:
        return sorted({n.rsplit(".", 2)[0] for n in self.index if n.endswith(".summary.npy")})

    def __getstate__(self):  # file handles are per process
        d = dict(self.__dict__)
        d["_files"] = {}
        return d
