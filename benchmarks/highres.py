"""Bench section (i): the high-resolution data path (issue 13, part 4) and a 1024-px SAM card through the cache.

(a) The same synthetic 16-bit images (1024 x 1024, smooth noise, a radiograph's bit depth) are packed twice with
    ``agglom data pack``: ``max_side=1024`` (kept as they are) and ``max_side=256`` (shrunk on packing). Each set is
    then read by the real training reader (``train_loader``, no workers, so all decoding happens in one process) at
    the same training size, in a fresh subprocess, whose peak RSS (``VmHWM``) is the figure: the bench process's own
    peak (training runs, teachers) would swamp it. The row's ratio, 1024-px shards over 256-px shards, says whether
    memory stays flat when the shards are 16x larger in pixels; ``growth_mib`` is each run's peak over its RSS just
    before the first batch (what the reading itself added).
(b) The SAM card family at 1024 px through the feature cache (``agglom cache``'s ``write_cache``): a small
    random-weight SAM image encoder (segment-anything's ImageEncoderViT: patch 16, windowed + global attention,
    relative positions, the conv neck) reads the 1024-px shards at 1024 px, the size SAM/MedSAM take. Seconds per
    image are the teacher's forward and encoding (the writer's own count) and the whole call's wall time per image.

``python -m benchmarks.highres read ROOT SIZE SAMPLES`` is the subprocess of (a): it prints one JSON line.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from benchmarks.common import json_subprocess, status_mib

REPO = Path(__file__).resolve().parents[1]

#: a SAM image encoder small enough for 2 CPU cores at 1024 px (SAM ViT-B: width 768, depth 12, neck 256)
TINY_SAM_1024 = {"patch_size": 16, "embed_dim": 48, "depth": 2, "num_heads": 2, "mlp_ratio": 4.0, "out_chans": 32,
                 "qkv_bias": True, "use_rel_pos": True, "window_size": 14, "global_attn_indexes": [1]}


def highres_sizes(quick: bool) -> Dict[str, int]:
    """Images packed, their side (``hi``) and the smaller packing (``lo``), the training size they are read at,
    samples read per run, and the smaller shuffle buffer of the diagnostic read (quick: half the sides)."""
    base = {"n": 8, "hi": 1024, "lo": 256, "read_size": 224, "samples": 32}
    return dict(base, n=4, hi=512, lo=128, read_size=64, samples=8) if quick else base


def write_sources(src: Path, n: int, side: int = 1024, seed: int = 0) -> Path:
    """``n`` 16-bit grayscale PNGs ``side`` px square (smooth noise: upsampled coarse noise plus fine noise, so
    they neither compress to nothing nor are pure noise) and a CSV (``file,label,site``) for ``agglom data pack``."""
    import numpy as np
    from PIL import Image

    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = ["file,label,site"]
    for i in range(n):
        coarse = rng.random((side // 32, side // 32), dtype=np.float32)
        smooth = np.asarray(Image.fromarray(coarse, mode="F").resize((side, side), Image.Resampling.BICUBIC))
        arr = np.clip(smooth * 50000 + rng.normal(0, 2000, (side, side)) + 5000, 0, 65535).astype(np.uint16)
        Image.fromarray(arr).save(src / f"img{i}.png")
        rows.append(f"{src / f'img{i}.png'},{i % 2},{'AB'[i % 2]}")
    csv = src / "data.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def pack_at(csv: Path, out: Path, max_side: int) -> Dict[str, Any]:
    """``agglom data pack csv=... max_side=N`` (every image in the train split); returns the datasheet."""
    from agglom.cli import main
    from agglom.data.writer import read_datasheet
    from benchmarks.common import quiet

    args = ["data", "pack", f"out={out}", f"csv={csv}", "path_col=file", "attr_cols=[site]", f"max_side={max_side}",
            "val_frac=0", "test_frac=0", "shard_size=4", "force=true"]
    with quiet():
        if main(args) != 0:
            raise RuntimeError(f"bench (i): agglom data pack max_side={max_side} failed")
    return read_datasheet(out)


def read_peak(root: str, size: int, samples: int, *overrides: str) -> Dict[str, Any]:
    """(In the subprocess.) Read ``samples`` training samples of ``root`` at ``size`` px through ``train_loader``
    (no workers; the demo recipe plus ``overrides``, e.g. ``data.shuffle_buffer_mb=0``); peak RSS (VmHWM) and the
    RSS before the first batch, in MiB."""
    from agglom.config.load import load_config
    from agglom.config.schema import Recipe
    from agglom.data.readers import train_loader

    cfg = load_config(Recipe, [f"recipe={REPO / 'recipes' / 'demo.yaml'}", f"data.root={root}",
                               f"data.image_size={size}", "data.batch_size=4", "data.num_workers=0",
                               f"data.epoch_samples={samples}", *overrides])
    before, n, t = status_mib("VmRSS"), 0, time.perf_counter()
    for batch in train_loader(cfg):
        n += int(batch["image"].shape[0])
        shape = list(batch["image"].shape)
    return {"peak_mib": status_mib("VmHWM"), "rss_before_mib": before, "samples": n, "batch_shape": shape,
            "seconds": time.perf_counter() - t, "shuffle_buffer": int(cfg.data.shuffle_buffer),
            "shuffle_buffer_mb": float(cfg.data.shuffle_buffer_mb)}


def measure_read(root: Path, size: int, samples: int, *overrides: str) -> Dict[str, Any]:
    """:func:`read_peak` in a fresh interpreter (``OMP_NUM_THREADS=1``, this checkout first on the path)."""
    return json_subprocess(["benchmarks.highres", "read", str(root), str(size), str(samples), *overrides],
                           "(i) the reader subprocess", 600, OMP_NUM_THREADS="1")


def sam_1024_card(cards: Path) -> str:
    """A card for the tiny SAM encoder at 1024 px (the tiny-sam card's family and preprocessing)."""
    from benchmarks.common import write_card

    return write_card(cards, "tiny-sam", "bench-sam-1024", input_size=1024, model_args=TINY_SAM_1024)


def bench_sam_cache(rows: Any, root: Path, work: Path, cards: Path) -> Dict[str, Any]:
    """Row ``SAM card at 1024 px through the feature cache``: seconds per image, teacher and whole call."""
    from agglom.cache.writer import write_cache
    from agglom.config.load import load_config
    from agglom.config.schema import Recipe
    from benchmarks.common import quiet

    card = sam_1024_card(cards)
    cfg = load_config(Recipe, [f"recipe={REPO / 'recipes' / 'demo.yaml'}", f"data.root={root}", "data.image_size=1024",
                               "data.num_workers=0", f"teachers=[{{name: {card}}}]"])
    t = time.perf_counter()
    with quiet():
        summary = write_cache(cfg, None, str(work / "cache-sam-1024"), dtype="int8", pool=1,
                              splits=[cfg.data.train_split], batch_size=2, device="cpu")
    wall = time.perf_counter() - t
    got = next(iter(summary.values()))
    n = int(got["samples_written"])
    per_image = got["teacher_seconds"] / max(n, 1)
    rows.add("i", f"SAM card at 1024 px through the cache (tiny encoder, CPU, {n} images)", per_image, None,
             "s/image", "", None, wall_s_per_image=wall / max(n, 1), read_s=got["read_seconds"], samples=n,
             bytes_per_sample=got["bytes_per_sample"], model_args=TINY_SAM_1024)
    return got


def _bytes_per_sample(root: Path) -> float:
    """Mean bytes per sample in the train split's shards (tar headers included): what the shuffle buffer holds."""
    from agglom.data.writer import read_datasheet

    shards = sorted((root / "train").glob("*.tar"))
    return sum(p.stat().st_size for p in shards) / max(1, int(read_datasheet(root)["samples"]))


def bench_highres(rows: Any, work: Path, cards: Path, quick: bool) -> Dict[str, Any]:
    """Section (i): peak RSS reading large vs small 16-bit shards (and the large ones with a smaller shuffle
    buffer, which holds encoded samples: its size in samples, not bytes, is what grows), and the SAM card at
    1024 px via the cache."""
    hs = highres_sizes(quick)
    hi, lo = hs["hi"], hs["lo"]
    csv = write_sources(work / "highres-src", hs["n"], side=hi)
    roots = {side: work / f"highres-{side}" for side in (hi, lo)}
    sheets = {side: pack_at(csv, root, side) for side, root in roots.items()}
    nbytes = {side: _bytes_per_sample(root) for side, root in roots.items()}
    size, samples = hs["read_size"], hs["samples"]
    unbounded = "data.shuffle_buffer_mb=0"
    reads = {"hi": measure_read(roots[hi], size, samples), "lo": measure_read(roots[lo], size, samples),
             "hi_unbounded": measure_read(roots[hi], size, samples, unbounded)}
    growth = {k: r["peak_mib"] - r["rss_before_mib"] for k, r in reads.items()}
    buf, mb = reads["hi"]["shuffle_buffer"], reads["hi"]["shuffle_buffer_mb"]
    common = dict(growth_mib=growth, bytes_per_sample={str(k): v for k, v in nbytes.items()},
                  downsized=sheets[lo]["params"]["downsized"], images=hs["n"], samples=samples)
    rows.add("i", f"peak RSS reading {hi}-px vs {lo}-px 16-bit shards at {size} px (shuffle buffer {buf} samples, "
                  f"<= {mb:g} MiB; growth {growth['hi']:.0f} vs {growth['lo']:.0f} MiB)", reads["hi"]["peak_mib"],
             reads["lo"]["peak_mib"], "MiB", "<= 1.25x (memory stays flat)",
             reads["hi"]["peak_mib"] <= 1.25 * reads["lo"]["peak_mib"], **common)
    rows.add("i", f"peak RSS reading {hi}-px shards, the shuffle buffer without vs with its byte bound "
                  f"(growth {growth['hi_unbounded']:.0f} vs {growth['hi']:.0f} MiB)", reads["hi_unbounded"]["peak_mib"],
             reads["hi"]["peak_mib"], "MiB", "", None, **common)
    sam = bench_sam_cache(rows, roots[hi], work, cards)
    return {"reads": reads, "sam": sam, "bytes_per_sample": nbytes}


def _main(argv: List[str]) -> int:
    if len(argv) < 4 or argv[0] != "read":
        print("usage: python -m benchmarks.highres read ROOT SIZE SAMPLES [KEY=VALUE ...]", file=sys.stderr)
        return 2
    print(json.dumps(read_peak(argv[1], int(argv[2]), int(argv[3]), *argv[4:])), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
