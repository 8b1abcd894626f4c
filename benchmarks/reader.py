"""Section a: the reader against a plain torch Dataset over the same PNGs, and agglom's tar header parser against
tarfile's stream mode over the same shards."""
from __future__ import annotations

import tarfile
import time
from pathlib import Path
from typing import Any, Dict, List

from benchmarks.common import Rows, make_cfg


def extract_pngs(root: Path, split: str, dest: Path) -> List[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    files = []
    for shard in sorted((root / split).glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".png"):
                    p = dest / m.name
                    p.write_bytes(tar.extractfile(m).read())
                    files.append(p)
    return files


def plain_loader(files: List[Path], size: int, batch: int, samples: int, workers: int, mean, std):
    import numpy as np
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset, RandomSampler
    from torchvision.transforms import v2

    tf = v2.Compose([v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.8, 1.25), antialias=True),
                     v2.RandomHorizontalFlip(), v2.RandomRotation(10), v2.ColorJitter(brightness=0.1, contrast=0.1),
                     v2.Normalize(mean, std)])

    class PngFolder(Dataset):
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int):
            a = np.asarray(Image.open(files[i]), dtype=np.float32) / 255.0
            x = torch.from_numpy(a)[None].expand(3, -1, -1).contiguous()
            return tf(x), 0

    return DataLoader(PngFolder(), batch_size=batch, num_workers=workers,
                      sampler=RandomSampler(range(len(files)), replacement=True, num_samples=samples),
                      prefetch_factor=2 if workers else None)


def bench_reader(rows: Rows, root: Path, work: Path, s: Dict[str, Any], rounds: int) -> None:
    from omegaconf import OmegaConf

    from agglom.data.readers import train_loader

    cfg = make_cfg(root, work, s, "reader", ["tiny-clip"])
    aug = {"hflip": 0.5, "scale_min": 0.7, "ratio_jitter": 0.25, "rotate": 10.0, "brightness": 0.1, "contrast": 0.1}
    cfg = OmegaConf.merge(cfg, {"data": {"num_workers": 2, "epoch_samples": s["reader_samples"], "augment": aug}})
    files = extract_pngs(root, "train", work / "png")

    def timed(it) -> float:
        t, n = time.perf_counter(), 0
        for b in it:
            n += len(b[0]) if isinstance(b, (list, tuple)) else len(b["key"])
        return n / (time.perf_counter() - t)

    ours, plain = [], []
    for _ in range(max(2, rounds)):
        ours.append(timed(train_loader(cfg)))
        plain.append(timed(plain_loader(files, s["image_size"], s["batch"], s["reader_samples"], 2,
                                        list(cfg.student.mean), list(cfg.student.std))))
    rows.add("a", "reader samples/s (2 workers, decode+augment)", max(ours), max(plain), "samples/s",
             ">= 1.0x plain", max(ours) >= max(plain), rounds_ours=ours, rounds_plain=plain)
    bench_tar_parse(rows, root, rounds)


def bench_tar_parse(rows: Rows, root: Path, rounds: int) -> None:
    """Shard members per second: agglom's tar header parser (agglom.data.tarstream) vs tarfile's stream mode."""
    import tarfile

    from agglom.data.tarstream import members

    shards = sorted((root / "train").glob("*.tar"))

    def rate(read) -> float:
        t, n = time.perf_counter(), 0
        for shard in shards:
            with open(shard, "rb") as f:
                n += sum(1 for _ in read(f))
        return n / (time.perf_counter() - t)

    def with_tarfile(f):
        tar = tarfile.open(fileobj=f, mode="r|*")
        for info in tar:
            yield info.name, tar.extractfile(info).read() if info.isreg() else b""
            tar.members = []

    ours, base = [], []
    for _ in range(max(2, rounds)):
        ours.append(rate(members))
        base.append(rate(with_tarfile))
    rows.add("a", "shard members/s: agglom's tar parser vs tarfile", max(ours), max(base), "members/s", "", None,
             rounds_ours=ours, rounds_tarfile=base)


