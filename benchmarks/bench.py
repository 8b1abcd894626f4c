"""`python -m benchmarks.bench [device=cpu|cuda] [size=demo|realistic] [steps=N] [quick=true] [ds=true] [out=bench.json]`

Benchmarks, each a ratio against a baseline measured in the same process (timings on shared machines are noisy;
runs are interleaved and per-step times summarised by their median):

a) reader samples/s (agglom train_loader, 2 workers, decode + augmentation) vs a plain torch Dataset/DataLoader
   over the same PNGs extracted to a folder, with the same augmentations; and shard members/s of agglom's tar
   header parser vs tarfile's stream mode over the same shards;
b) training samples/s with cached vs online teachers (demo teachers; and "wide" teachers whose forward dominates,
   as with real foundation models);
c) engine overhead: `agglom.distill.train` vs a minimal plain-PyTorch loop over the same task, teachers,
   loader and AdamW;
d) DeepSpeed ZeRO-2 vs the torch strategy, step time (cached teachers, same batches);
e) peak RSS of the training runs;
f) cache bytes per sample per teacher (fp16, int8, int8 + 2x2 pooling) vs bf16 full maps, with cosines vs online;
g) estimated FLOP utilisation: training FLOPs/sample x samples/s over the measured GEMM rate (fp32 2048^2 on
   the CPU; bf16 8192^2 on a GPU, where training runs bf16), and the same for the student's own timm step alone
   (forward, backward and AdamW on random images, no heads, teachers or data): what PyTorch reaches at this width;
   and the training step's FLOP rate over that timm step's, online and cached (rows "training step vs the
   student's timm step", target >= 0.92x), and the same for agglom's step alone on one batch, interleaved step by
   step with timm's (rows "agglom's step alone on one batch": no data loading or loop, so what agglom's heads,
   targets, losses and objectives cost). Each utilisation divides by the best of the first GEMM measurement and
   one taken right after its own runs;
h) the step's time per phase (log.phases=true), online and cached, as fractions of the step (benchmarks/phases.py);
i) high resolution (benchmarks/highres.py): peak RSS of the reader over 1024-px vs 256-px 16-bit shards (packed
   with `agglom data pack max_side=N`, read in a fresh process), and a 1024-px SAM card through the feature cache
   on the CPU, seconds per image;
j) scaling (benchmarks/scaling.py; not with quick=true): step time and peak RSS with 2 and 4 online teachers against
   1, and peak RSS training over 10x the samples against 1x, each configuration in a fresh process.

Everything lives in a temporary folder (synthetic data, caches, temporary teacher cards, runs).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from benchmarks.common import REPO, Rows

DEFAULTS = {"device": "cpu", "size": "demo", "steps": 0, "quick": False, "ds": True, "out": "bench.json",
            "keep": False, "threads": 0}


def parse_args(argv: Sequence[str]) -> Dict[str, Any]:
    from benchmarks.common import parse_options

    opts = parse_options(argv, DEFAULTS, __doc__ or "", "bench")
    if opts["device"] not in ("cpu", "cuda") or opts["size"] not in ("demo", "realistic"):
        raise SystemExit("bench: device=cpu|cuda, size=demo|realistic")
    return opts



def _environment(opts: Dict[str, Any]):
    """Environment for the device, before torch is imported; returns torch."""
    device = opts["device"]
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: device=cuda but no CUDA device is visible")
    if device == "cpu":
        # agglom's engines pick CUDA when present; hide it so the cpu bench measures the cpu
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if opts["threads"]:
        torch.set_num_threads(int(opts["threads"]))
    return torch


def run(opts: Dict[str, Any]) -> Dict[str, Any]:
    """Every section in turn, in one temporary folder; prints the table and writes ``opts["out"]``."""
    torch = _environment(opts)
    from agglom.data.synth import SynthParams, write_synth
    from benchmarks.common import gemm_rate, make_cfg, peak_rss_mib, quiet, realistic_cards, sizes
    from benchmarks.highres import bench_highres
    from benchmarks.phases import bench_phases
    from benchmarks.reader import bench_reader
    from benchmarks.training import (
        bench_bytes,
        bench_deepspeed,
        bench_online_cached,
        bench_timm_reference,
        bench_wide,
        write_train_cache,
    )

    device = opts["device"]
    s = dict(sizes(opts), device=device)
    realistic = opts["size"] == "realistic"
    rows = Rows()
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="agglom-bench-"))
    print(f"bench: device={device} size={opts['size']} quick={opts['quick']} steps={s['steps']} "
          f"batch={s['batch']} image={s['image_size']} torch threads={torch.get_num_threads()} work={work}", flush=True)
    root, cards = work / "synth", work / "cards"
    t = time.perf_counter()
    with quiet():
        write_synth(str(root), SynthParams(n=s["n"], image_size=s["image_size"], seed=0), shard_size=s["shard"])
    print(f"  synthetic data: {s['n']} samples in {time.perf_counter() - t:.1f}s", flush=True)
    cards.mkdir()
    teachers = realistic_cards(cards, device == "cuda") if realistic else ["tiny-clip", "tiny-dinov2", "tiny-sam"]
    rss0 = peak_rss_mib()
    gemm = gemm_rate(device, s["gemm_n"])
    rows.add("g", "GEMM rate, the FLOP ceiling (" + ("bf16 8192^2" if device == "cuda" else f"fp32 {s['gemm_n']}^2") + ")",
             gemm / 1e9, None, "GFLOP/s")
    bench_reader(rows, root, work, s, s["rounds"])  # (a)
    cache_dir = work / "cache"
    cfg_on = make_cfg(root, work, s, "online", teachers, realistic=realistic)
    cache_s = write_train_cache(cfg_on, teachers, cache_dir, device, batch_size=s["batch"])
    cfg_ca = make_cfg(root, work, s, "cached", teachers, cache=str(cache_dir), realistic=realistic)
    print(f"  cache written (int8, train split) in {cache_s:.1f}s; training runs ...", flush=True)
    bench_online_cached(rows, cfg_on, cfg_ca, s, gemm, rss0, realistic, cache_s)  # (b), (c), (e), (g)
    bench_timm_reference(rows, cfg_on, cfg_ca, s, gemm)  # (g) the student's timm step, and the steps against it
    bench_phases(rows, root, work, s, teachers, cache_dir, realistic)  # (h) where the step's time goes
    if s["wide"]:
        bench_wide(rows, root, work, s, cards)  # (b) with teachers whose forward dominates
    if opts["ds"]:
        cfg_ds = make_cfg(root, work, s, "ds", teachers, cache=str(cache_dir), realistic=realistic,
                          extra=["engine.name=deepspeed", "engine.zero_stage=2"])
        bench_deepspeed(rows, cfg_ca, cfg_ds, s["rounds"])  # (d)
    bench_bytes(rows, cfg_on, teachers, work / "bytes", device)  # (f)
    bench_highres(rows, work, cards, opts["quick"])  # (i) high-resolution shards' memory, SAM at 1024 px
    if not opts["quick"]:
        from benchmarks.scaling import bench_scaling

        bench_scaling(rows, root, work, s, cards)  # (j) teachers 1/2/4 and 10x the samples
    return _finish(opts, rows, s, work, time.perf_counter() - t_start, torch.get_num_threads())


def _finish(opts: Dict[str, Any], rows: Rows, s: Dict[str, Any], work: Path, total: float,
            threads: int) -> Dict[str, Any]:
    report = {"options": opts, "sizes": s, "device": opts["device"], "torch_threads": threads,
              "seconds": total, "rows": rows.rows,
              "note": "ratios are measured in one process; per-step rates are medians of interleaved runs"}
    if opts["out"]:
        Path(opts["out"]).write_text(json.dumps(report, indent=1, default=str))
    print("\n" + rows.table(), flush=True)
    print(f"\nbench: {total:.0f}s; wrote {opts['out']}", flush=True)
    if not opts["keep"]:
        shutil.rmtree(work, ignore_errors=True)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    run(parse_args(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
