"""`agglom cache`: teacher outputs written once, one shard set per teacher, keys identical to the images'.

Layout: `<cache>/<teacher>/<split>/<image shard name>.tar` holding one member `<key>.feat` per sample (the raw
bytes of summary, spatial and, for int8, their fp16 scales: see `codec.pack`) and `<cache>/<teacher>/manifest.json`
(card digest, preprocessing, dtype, pooling, shapes). Each shard is written to a temporary name and renamed, so the command resumes shard by shard.
"""
from __future__ import annotations

import io
import os
import tarfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from agglom.cache.codec import encode, grid_after_pool, pack, pool_spatial, stored_bytes
from agglom.cache.lock import CacheLock
from agglom.config.choices import input_channels
from agglom.data.jsonfile import write_json_atomic
from agglom.data.limits import unsafe_key
from agglom.errors import ReadableError

MANIFEST_SCHEMA = "agglom.cache/2"
MAX_MANIFEST_BYTES = 64 << 20  # a manifest holds ~100 bytes a shard: hundreds of thousands of shards fit


def preprocessing_of(cfg: DictConfig) -> Dict[str, Any]:
    """Everything about the input that changes a teacher's output; a cache made under other values is stale."""
    c = input_channels(cfg.data.grayscale)
    return {"image_size": int(cfg.data.image_size), "grayscale": str(cfg.data.grayscale),
            "interpolation": str(cfg.data.get("interpolation", "bicubic")),
            "mean": [float(v) for v in list(cfg.student.mean)[:c]], "std": [float(v) for v in list(cfg.student.std)[:c]]}


def cache_name(teacher: str) -> str:
    """The folder name of a teacher's cache: the card name, or the stem of a card path / export folder (a path
    would otherwise escape the cache folder: Path(out) / "/abs/card.yaml" is "/abs/card.yaml")."""
    s = str(teacher)
    if os.sep in s or "/" in s or s.endswith((".yaml", ".yml")):
        p = Path(s.rstrip("/"))
        return p.stem if p.suffix in (".yaml", ".yml") else p.name
    return s


def cache_dir_for(cfg: DictConfig, teacher: str, out: Optional[str] = None) -> Path:
    return Path(out or Path(cfg.data.root) / "cache") / cache_name(teacher)


def shard_fingerprint(path: str, head: int = 1 << 20) -> str:
    """Size + a hash of the first and last MiB of an image shard: cheap to check on every open, and it changes
    when the shard is regenerated (another seed, other images) even when its name and sample count do not."""
    import hashlib

    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(head))
        if size > head:
            f.seek(max(head, size - head))
            h.update(f.read(head))
    return f"{size}:{h.hexdigest()[:24]}"


def _add(tar: tarfile.TarFile, key: str, data: bytes) -> None:
    """``<key>.feat`` into ``tar``. The readers skip a key that names a path (``bad_key``,
    :func:`agglom.data.limits.unsafe_key`) before it gets here; one that did anyway is refused, never written."""
    why = unsafe_key(key)
    if why is not None:
        raise ReadableError(f"agglom cache: refusing to write a cache member for sample key {key[:80]!r}: {why}")
    info = tarfile.TarInfo(f"{key}.feat")
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


def _single_shard_cfg(cfg: DictConfig, split: str, url: str) -> DictConfig:
    one = OmegaConf.merge(cfg, {"data": {"shards": url, "train_split": split, "num_workers": 0, "sidecars": []}})
    return one


def _old_manifest(path: Path) -> Dict[str, Any]:
    """A cache folder's manifest as written, or {} when it is not a JSON object (damaged, too large, nested too
    deeply, not a regular file: the cache is rewritten)."""
    from agglom.data.jsonfile import peek_json

    old = peek_json(path, max_bytes=MAX_MANIFEST_BYTES)
    return old if isinstance(old, dict) else {}


def _teacher_state(cfg: DictConfig, name: str, out: Optional[str], dtype: str, pool: int, device: str) -> Dict[str, Any]:
    """Build one teacher and its cache folder's manifest: kept when written under the same settings (a resumed
    cache), else the folder's shards are removed (never mix two caches)."""
    import teachers as zoo

    c = input_channels(cfg.data.grayscale)
    card = zoo.load_card(name)
    teacher = zoo.build_teacher(card, input_mean=list(cfg.student.mean)[:c], input_std=list(cfg.student.std)[:c],
                                device=device)
    root = cache_dir_for(cfg, name, out)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / "manifest.json"
    manifest = {"schema": MANIFEST_SCHEMA, "teacher": cache_name(name), "card_digest": card.digest(),
                "preprocessing": preprocessing_of(cfg), "dtype": dtype, "pool": int(pool),
                "summary_dim": int(teacher.summary_dim), "spatial_dim": int(teacher.spatial_dim),
                "teacher_grid": list(teacher.grid), "grid": list(grid_after_pool(tuple(teacher.grid), pool)),
                "splits": {}, "complete": False}
    if manifest_path.is_file():
        old = _old_manifest(manifest_path)
        same = {k: old.get(k) for k in ("schema", "card_digest", "preprocessing", "dtype", "pool")} == \
               {k: manifest[k] for k in ("schema", "card_digest", "preprocessing", "dtype", "pool")}
        if same and isinstance(old.get("splits"), dict):
            manifest["splits"] = old["splits"]
        else:  # stale: start again rather than mix two caches
            print(f"agglom cache: {name}: the cache at {root} was made under other settings; rewriting it", flush=True)
            for p in root.glob("*/*.tar"):
                if not p.parent.is_symlink() and p.is_file():  # never a file a linked folder leads to
                    p.unlink()
    return {"name": name, "teacher": teacher, "root": root, "manifest": manifest, "manifest_path": manifest_path,
            "n_done": 0, "nbytes": 0, "seconds": 0.0}


def _pending(states: List[Dict[str, Any]], split: str, shard_name: str, fingerprint: str) -> List[Dict[str, Any]]:
    """The teachers still to cache this shard (resumable: a shard already written for these images is skipped)."""
    pending = []
    for st in states:
        (st["root"] / split).mkdir(exist_ok=True)
        entry = st["manifest"]["splits"].setdefault(split, {"shards": {}})
        entry.setdefault("fingerprints", {})
        if not ((st["root"] / split / shard_name).is_file() and shard_name in entry["shards"]
                and entry["fingerprints"].get(shard_name) == fingerprint):
            pending.append(st)
    return pending


def _cache_shard(cfg: DictConfig, split: str, url: str, pending: List[Dict[str, Any]], dtype: str, pool: int,
                 batch_size: int, device: str) -> tuple:
    """Read one image shard once and write every pending teacher's cache shard (temporary file, renamed into
    place); returns (samples, seconds spent reading)."""
    from agglom.data.readers import eval_loader

    shard_name = Path(url).name
    tmps = [st["root"] / split / f".{shard_name}.tmp" for st in pending]
    tars = [tarfile.open(t, "w") for t in tmps]
    count, t_read = 0, 0.0
    loader = eval_loader(_single_shard_cfg(cfg, split, url), split, batch_size=batch_size)
    try:
        t0 = time.perf_counter()
        with torch.no_grad():
            for batch in loader:
                t_read += time.perf_counter() - t0
                image = batch["image"].to(device)
                for st, tar in zip(pending, tars):
                    t1 = time.perf_counter()
                    o = st["teacher"](image)
                    spatial = pool_spatial(o.spatial.float(), pool).cpu().numpy()
                    summ = o.summary.float().cpu().numpy()
                    for i, key in enumerate(batch["key"]):
                        ps, pp = encode(summ[i], dtype, 0), encode(spatial[i], dtype, 0)
                        st["nbytes"] += stored_bytes(ps) + stored_bytes(pp)
                        _add(tar, key, pack(ps, pp))
                    st["seconds"] += time.perf_counter() - t1
                count += len(batch["key"])
                t0 = time.perf_counter()
    finally:
        for tar in tars:
            tar.close()
    for st, tmp in zip(pending, tmps):
        os.replace(tmp, st["root"] / split / shard_name)
    if loader.stats.total:  # what the reader left out has no features: said here, and again by a training reader
        print(f"agglom cache: {split}/{shard_name}: skipped {loader.stats.total}: {loader.stats.describe()}",
              flush=True)
    return count, t_read


def _finish(st: Dict[str, Any], t_read: float, dtype: str, pool: int) -> Dict[str, Any]:
    """Mark a teacher's cache complete with its payload and on-disk bytes per sample; its summary."""
    name, root, manifest, n_done = st["name"], st["root"], st["manifest"], st["n_done"]
    manifest["complete"] = True
    manifest["bytes_per_sample"] = st["nbytes"] / n_done if n_done else manifest.get("bytes_per_sample")
    # on disk: the payload + the tar's 512 B header and padding per sample
    total = sum(n for e in manifest["splits"].values() for n in e["shards"].values())
    disk = sum((root / sp / sh).stat().st_size for sp, e in manifest["splits"].items() for sh in e["shards"]
               if (root / sp / sh).is_file())
    manifest["disk_bytes_per_sample"] = disk / total if total else None
    write_json_atomic(st["manifest_path"], manifest, indent=1)
    print(f"agglom cache: {name}: {n_done} samples written to {root} "
          f"({manifest['bytes_per_sample'] or 0:.0f} B/sample, {dtype}, pool {pool}; teacher {st['seconds']:.1f}s, "
          f"reading {t_read:.1f}s shared)", flush=True)
    return {"dir": str(root), "samples_written": n_done, "teacher_seconds": st["seconds"], "read_seconds": t_read,
            "bytes_per_sample": manifest["bytes_per_sample"]}


def write_cache(cfg: DictConfig, teacher_names: Optional[List[str]] = None, out: Optional[str] = None,
                dtype: str = "fp16", pool: int = 1, splits: Optional[List[str]] = None, batch_size: int = 64,
                device: str = "cpu") -> Dict[str, Any]:
    """Cache the recipe's teachers (or `teacher_names`) over `splits` (default train, data.distill_splits, val, test). Returns a
    summary per teacher: samples, seconds, bytes per sample. Every teacher is built once; the images are then
    read once for all of them. Each teacher's folder is locked while it is written (:mod:`agglom.cache.lock`)."""
    if not splits:
        from agglom.data.shards import training_splits

        splits = training_splits(cfg) + [cfg.data.val_split, cfg.data.test_split]
    names = teacher_names or [e.name for e in cfg.teachers]
    with ExitStack() as locks:  # one writer per teacher folder: a second run is refused, naming this one
        for root in dict.fromkeys(cache_dir_for(cfg, name, out) for name in names):
            locks.enter_context(CacheLock(root))
        return _write(cfg, splits, names, out, dtype, pool, batch_size, device)


def _write(cfg: DictConfig, splits: List[str], names: List[str], out: Optional[str], dtype: str, pool: int,
           batch_size: int, device: str) -> Dict[str, Any]:
    """:func:`write_cache`'s work, under its locks."""
    from agglom.data.readers import shard_urls

    states = [_teacher_state(cfg, name, out, dtype, pool, device) for name in names]
    t_read = 0.0
    for split in splits:
        for url in shard_urls(cfg, split):
            shard_name, fingerprint = Path(url).name, shard_fingerprint(url)
            pending = _pending(states, split, shard_name, fingerprint)
            if not pending:
                continue
            count, seconds = _cache_shard(cfg, split, url, pending, dtype, pool, batch_size, device)
            t_read += seconds
            for st in pending:
                st["manifest"]["splits"][split]["shards"][shard_name] = count
                st["manifest"]["splits"][split]["fingerprints"][shard_name] = fingerprint
                st["n_done"] += count
                write_json_atomic(st["manifest_path"], st["manifest"], indent=1)  # never through a link
    return {st["name"]: _finish(st, t_read, dtype, pool) for st in states}
