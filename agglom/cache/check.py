"""`agglom cache check`: cached vs online cosine per teacher on a few samples (the cache's measured fidelity)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from agglom.cache.codec import pool_spatial
from agglom.config.choices import input_channels


def check_cache(cfg: Any, out: Optional[str] = None, teacher_names: Optional[List[str]] = None, n: int = 128,
                split: Optional[str] = None, device: str = "cpu") -> Dict[str, Dict[str, float]]:
    import teachers as zoo
    from agglom.cache.reader import open_cache
    from agglom.cache.writer import cache_dir_for
    from agglom.data.readers import eval_loader

    split = split or cfg.data.train_split
    names = teacher_names or [e.name for e in cfg.teachers]
    c = input_channels(cfg.data.grayscale)
    result: Dict[str, Dict[str, float]] = {}
    for name in names:
        card = zoo.load_card(name)
        cached = open_cache(str(cache_dir_for(cfg, name, out)), name, cfg, card.digest(), split=split)
        teacher = zoo.build_teacher(card, input_mean=list(cfg.student.mean)[:c], input_std=list(cfg.student.std)[:c],
                                    device=device)
        cos_s, cos_p, seen = [], [], 0
        with torch.no_grad():
            for batch in eval_loader(cfg, split):
                o = teacher(batch["image"].to(device))
                got = cached.lookup(batch["key"])
                cos_s.append(F.cosine_similarity(got["summary"], o.summary.float().cpu(), dim=-1))
                online = pool_spatial(o.spatial.float(), int(cached.manifest["pool"])).cpu()
                cos_p.append(F.cosine_similarity(got["spatial"], online, dim=1).flatten(1).mean(1))
                seen += len(batch["key"])
                if seen >= n:
                    break
        s, p = torch.cat(cos_s), torch.cat(cos_p)
        result[name] = {"summary_cos_mean": float(s.mean()), "summary_cos_min": float(s.min()),
                        "spatial_cos_mean": float(p.mean()), "spatial_cos_min": float(p.min()), "samples": seen,
                        "dtype": cached.manifest["dtype"], "pool": int(cached.manifest["pool"]),
                        "bytes_per_sample": cached.manifest.get("bytes_per_sample")}
        r = result[name]
        print(f"{name:<20} summary cos {r['summary_cos_mean']:.5f} (min {r['summary_cos_min']:.5f})  spatial cos "
              f"{r['spatial_cos_mean']:.5f} (min {r['spatial_cos_min']:.5f})  [{r['dtype']}, pool {r['pool']}, "
              f"{r['samples']} samples]", flush=True)
    return result
