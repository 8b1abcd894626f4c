"""`agglom cache`: teacher outputs written once, one shard set per teacher, keys identical to the images'.

Layout: `<cache>/<teacher>/<split>/<image shard name>.tar` holding `<key>.summary.npy`, `<key>.spatial.npy`
(+ `*_scale.npy` for int8) and `<cache>/<teacher>/manifest.json` (card digest, preprocessing, dtype, pooling,
shapes). Each shard is written to a temporary name and renamed, so the command resumes shard by shard.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from agglom.cache.codec import encode, grid_after_pool, npy_bytes, pool_spatial, stored_bytes

MANIFEST_SCHEMA = "agglom.cache/1"


def preprocessing_of(cfg: DictConfig) -> Dict[str, Any]:
    """Everything about the input that changes a teacher's output; a cache made under other values is stale."""
    c = 1 if cfg.data.grayscale == "keep" else 3
    return {"image_size": int(cfg.data.image_size), "grayscale": str(cfg.data.grayscale),
            "interpolation": str(cfg.data.get("interpolation", "bicubic")),
            "mean": [float(v) for v in list(cfg.student.mean)[:c]], "std": [float(v) for v in list(cfg.student.std)[:c]]}


def cache_dir_for(cfg: DictConfig, teacher: str, out: Optional[str] = None) -> Path:
    return Path(out or Path(cfg.data.root) / "cache") / teacher


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


def _single_shard_cfg(cfg: DictConfig, split: str, url: str) -> DictConfig:
    one = OmegaConf.merge(cfg, {"data": {"shards": url, "train_split": split, "num_workers": 0, "sidecars": []}})
    return one


def write_cache(cfg: DictConfig, teacher_names: Optional[List[str]] = None, out: Optional[str] = None,
                dtype: str = "fp16", pool: int = 1, splits: Optional[List[str]] = None, batch_size: int = 64,
                device: str = "cpu") -> Dict[str, Any]:
    """Cache the recipe's teachers (or `teacher_names`) over `splits` (default train/val/test). Returns a
    summary per teacher: samples, seconds, bytes per sample."""
    import teachers as zoo

    from agglom.data.readers import eval_loader, shard_urls

    splits = splits or [cfg.data.train_split, cfg.data.val_split, cfg.data.test_split]
    names = teacher_names or [e.name for e in cfg.teachers]
    c = 1 if cfg.data.grayscale == "keep" else 3
    summary: Dict[str, Any] = {}
    for name in names:
        card = zoo.load_card(name)
        teacher = zoo.build_teacher(card, input_mean=list(cfg.student.mean)[:c], input_std=list(cfg.student.std)[:c],
                                    device=device)
        root = cache_dir_for(cfg, name, out)
        root.mkdir(parents=True, exist_ok=True)
        manifest_path = root / "manifest.json"
        manifest = {"schema": MANIFEST_SCHEMA, "teacher": name, "card_digest": card.digest(),
                    "preprocessing": preprocessing_of(cfg), "dtype": dtype, "pool": int(pool),
                    "summary_dim": int(teacher.summary_dim), "spatial_dim": int(teacher.spatial_dim),
                    "teacher_grid": list(teacher.grid), "grid": list(grid_after_pool(tuple(teacher.grid), pool)),
                    "splits": {}, "complete": False}
        if manifest_path.is_file():
            old = json.loads(manifest_path.read_text())
            same = {k: old.get(k) for k in ("card_digest", "preprocessing", "dtype", "pool")} == \
                   {k: manifest[k] for k in ("card_digest", "preprocessing", "dtype", "pool")}
            if same:
                manifest["splits"] = old.get("splits", {})
            else:  # stale: start again rather than mix two caches
                for p in root.glob("*/*.tar"):
                    p.unlink()
        n_done, t0, nbytes = 0, time.perf_counter(), 0
        for split in splits:
            split_dir = root / split
            split_dir.mkdir(exist_ok=True)
            entry = manifest["splits"].setdefault(split, {"shards": {}})
            for url in shard_urls(cfg, split):
                shard_name = Path(url).name
                final = split_dir / shard_name
                if final.is_file() and shard_name in entry["shards"]:
                    continue  # resumable: this shard is done
                tmp = split_dir / f".{shard_name}.tmp"
                count = 0
                with tarfile.open(tmp, "w") as tar, torch.no_grad():
                    for batch in eval_loader(_single_shard_cfg(cfg, split, url), split, batch_size=batch_size):
                        o = teacher(batch["image"].to(device))
                        spatial = pool_spatial(o.spatial.float(), pool).cpu().numpy()
                        summ = o.summary.float().cpu().numpy()
                        for i, key in enumerate(batch["key"]):
                            for kind, arr, axis in (("summary", summ[i], 0), ("spatial", spatial[i], 0)):
                                parts = encode(arr, dtype, axis)
                                nbytes += stored_bytes(parts)
                                for suffix, a in parts.items():
                                    _add(tar, f"{key}.{kind}{suffix}.npy", npy_bytes(a))
                            count += 1
                os.replace(tmp, final)
                entry["shards"][shard_name] = count
                n_done += count
                manifest_path.write_text(json.dumps(manifest, indent=1))
        manifest["complete"] = True
        manifest["bytes_per_sample"] = nbytes / n_done if n_done else manifest.get("bytes_per_sample")
        manifest_path.write_text(json.dumps(manifest, indent=1))
        summary[name] = {"dir": str(root), "samples_written": n_done, "seconds": time.perf_counter() - t0,
                         "bytes_per_sample": manifest["bytes_per_sample"]}
        print(f"agglom cache: {name}: {n_done} samples written to {root} "
              f"({manifest['bytes_per_sample'] or 0:.0f} B/sample, {dtype}, pool {pool})", flush=True)
    return summary
