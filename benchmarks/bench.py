"""`python -m benchmarks.bench [device=cpu|cuda] [size=demo|realistic] [steps=N] [quick=true] [ds=true] [out=bench.json]`

Benchmarks, each a ratio against a baseline measured in the same process (timings on shared machines are noisy;
runs are interleaved and per-step times summarised by their median):

a) reader samples/s (agglom train_loader, 2 workers, decode + augmentation) vs a plain torch Dataset/DataLoader
   over the same PNGs extracted to a folder, with the same augmentations; and shard members/s of agglom's tar
   header parser vs tarfile's stream mode over the same shards;
b) training samples/s with cached vs online teachers (demo teachers; and "wide" teachers whose forward dominates,
   as with real foundation models);
c) engine overhead: `agglom.train.loop.train` vs a minimal plain-PyTorch loop over the same task, teachers,
   loader and AdamW;
d) DeepSpeed ZeRO-2 vs the torch strategy, step time (cached teachers, same batches);
e) peak RSS of the training runs;
f) cache bytes per sample per teacher (fp16, int8, int8 + 2x2 pooling) vs bf16 full maps, with cosines vs online;
g) estimated FLOP utilisation: training FLOPs/sample x samples/s over the measured GEMM rate (fp32 2048^2 on
   the CPU; bf16 8192^2 on a GPU, where training runs bf16);
h) the step's time per phase (log.phases=true), online and cached, as fractions of the step (benchmarks/phases.py);
i) high resolution (benchmarks/highres.py): peak RSS of the reader over 1024-px vs 256-px 16-bit shards (packed
   with `agglom data pack max_side=N`, read in a fresh process), and a 1024-px SAM card through the feature cache
   on the CPU, seconds per image.

Everything lives in a temporary folder (synthetic data, caches, temporary teacher cards, runs).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import resource
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = {"device": "cpu", "size": "demo", "steps": 0, "quick": False, "ds": True, "out": "bench.json",
            "keep": False, "threads": 0}


def parse_args(argv: Sequence[str]) -> Dict[str, Any]:
    opts = dict(DEFAULTS)
    for a in argv:
        if a in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0)
        if "=" not in a:
            raise SystemExit(f"bench: expected key=value, got {a!r} (keys: {', '.join(DEFAULTS)})")
        k, v = a.split("=", 1)
        if k not in DEFAULTS:
            raise SystemExit(f"bench: unknown option {k!r} (keys: {', '.join(DEFAULTS)})")
        d = DEFAULTS[k]
        opts[k] = v.lower() in ("1", "true", "yes", "on") if isinstance(d, bool) else type(d)(v)
    if opts["device"] not in ("cpu", "cuda") or opts["size"] not in ("demo", "realistic"):
        raise SystemExit("bench: device=cpu|cuda, size=demo|realistic")
    return opts


# --------------------------------------------------------------------------------------------- plumbing
class Rows:
    def __init__(self) -> None:
        self.rows: List[Dict[str, Any]] = []

    def add(self, section: str, metric: str, value: Optional[float], baseline: Optional[float] = None,
            unit: str = "", target: str = "", met: Optional[bool] = None, ratio: Optional[float] = None,
            **extra: Any) -> Dict[str, Any]:
        if ratio is None and value is not None and baseline:
            ratio = value / baseline
        row = {"section": section, "metric": metric, "value": value, "baseline": baseline, "ratio": ratio,
               "unit": unit, "target": target, "met": met, **extra}
        self.rows.append(row)
        print(f"  [{section}] {metric}: {_fmt(value)} {unit} (baseline {_fmt(baseline)}, ratio {_fmt(ratio)})",
              flush=True)
        return row

    def table(self) -> str:
        head = ["", "metric", "value", "baseline", "ratio", "target", "met"]
        body = [[r["section"], r["metric"], f"{_fmt(r['value'])} {r['unit']}".strip(), _fmt(r["baseline"]),
                 _fmt(r["ratio"]), r["target"], {True: "yes", False: "NO", None: "-"}[r["met"]]] for r in self.rows]
        widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
        line = lambda cells: " | ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        return "\n".join([line(head), "-+-".join("-" * w for w in widths)] + [line(b) for b in body])


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0 or 0.01 <= abs(v) < 1e5:
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return f"{v:.3g}"
    return str(v)


class StepClock:
    """Timestamps every training batch as it arrives, through the loop's ``on_batch`` hook (the plain loop calls
    the same hook itself): the time between two batches is one full step."""

    def __init__(self) -> None:
        self.stamps: List[float] = []

    def on_batch(self, batch: Any) -> None:
        self.stamps.append(time.perf_counter())

    def on_step(self, step: int, total: int, logger: Any) -> None:
        pass

    def step_seconds(self, skip: int = 2) -> List[float]:
        """Per-step seconds, without the first `skip` (start-up: both workers' first batch, FLOP count)."""
        d = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return d[skip:]


def median_rate(step_s: Sequence[float], batch: int) -> float:
    return batch / statistics.median(step_s) if step_s else float("nan")


@contextlib.contextmanager
def quiet():
    """Keep the loops' own printing (resolved config, log lines) out of the bench output."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield buf


def gemm_rate(device: str, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of an n^2 GEMM: fp32 on the CPU (training runs fp32 there), bf16 on a GPU (training runs bf16)."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cuda":
        n = 8192  # a 2048^2 product is too small to fill a datacentre GPU
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def peak_rss_mib() -> Dict[str, float]:
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"self": self_kib / 1024, "children": kids_kib / 1024}


# --------------------------------------------------------------------------------------------- setup
def sizes(opts: Dict[str, Any]) -> Dict[str, Any]:
    quick, realistic, gpu = opts["quick"], opts["size"] == "realistic", opts["device"] == "cuda"
    if quick:
        s = dict(n=160, image_size=32, shard=40, batch=16, steps=4, rounds=1, reader_samples=64, wide=False,
                 student="{patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}", epoch=64)
    elif realistic:
        # batch 16 on the GPU: SAM ViT-B's global attention at 1024 px (4096 tokens, no fused kernel) takes
        # ~13 GB per 16 images
        s = dict(n=512 if gpu else 48, image_size=224, shard=128 if gpu else 16, batch=16 if gpu else 8,
                 steps=30 if gpu else 3, rounds=2 if gpu else 1, reader_samples=1024 if gpu else 64, wide=False,
                 student=None, epoch=2048 if gpu else 32)
    else:
        s = dict(n=1000, image_size=64, shard=200, batch=32, steps=30, rounds=2, reader_samples=1024, wide=True,
                 student=None, epoch=2048)
    if opts["steps"]:
        s["steps"] = int(opts["steps"])
    return s


def write_card(cards: Path, base: str, name: str, **over: Any) -> str:
    import yaml

    d = yaml.safe_load((REPO / "teachers" / "cards" / f"{base}.yaml").read_text()) if base else {}
    d.update(over, name=name, weights={"source": "none"},
             provenance="none: random initialisation (agglom bench)", description=f"agglom bench teacher {name}")
    # no ".yaml" suffix: the entry name becomes a ModuleDict key (no dots allowed); load_card reads any path
    path = cards / name
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return str(path)


def wide_cards(cards: Path) -> List[str]:
    """Teachers whose forward dominates the student's step (teacher FLOPs several times the student's
    fwd+bwd), as with foundation-model teachers; same families as the tiny cards, random weights."""
    return [
        write_card(cards, "tiny-clip", "bench-wide-clip", model="agglom-bench-wide-clip",
                   model_args={"embed_dim": 256, "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 256,
                                                                "layers": 6, "head_width": 64},
                               "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2,
                                            "layers": 1}}),
        write_card(cards, "tiny-dinov2", "bench-wide-dinov2", input_size=112,
                   model_args={"embed_dim": 384, "depth": 4, "num_heads": 6}),
        write_card(cards, "tiny-sam", "bench-wide-sam", input_size=128,
                   model_args={"patch_size": 16, "embed_dim": 192, "depth": 4, "num_heads": 3, "mlp_ratio": 4.0,
                               "out_chans": 64, "qkv_bias": True, "use_rel_pos": True, "window_size": 4,
                               "global_attn_indexes": [3]}),
    ]


def realistic_cards(cards: Path, gpu: bool) -> List[str]:
    """ViT-B/L-size teachers with random weights (CLIP ViT-B/16 at 224, DINOv2-reg ViT-L/14 at 224, and on a GPU
    SAM ViT-B at 1024, which takes ~15 s per image on 2 CPU cores)."""
    out = [write_card(cards, "clip-vit-b16", "bench-clip-vit-b16", tiny=False),
           write_card(cards, "dinov2-vitb14-reg", "bench-dinov2-vitl14-reg", model="vit_large_patch14_reg4_dinov2")]
    if gpu:
        out.append(write_card(cards, "sam-vit-b", "bench-sam-vit-b"))
    return out


def make_cfg(root: Path, work: Path, s: Dict[str, Any], name: str, teachers: Sequence[str],
             cache: Optional[str] = None, extra: Sequence[str] = (), realistic: bool = False):
    from agglom.config.load import load_config
    from agglom.config.schema import Recipe

    tlist = ", ".join(f"{{name: {t}" + (f", cache: {cache}}}" if cache else "}") for t in teachers)
    args = [f"recipe={REPO / 'recipes' / 'demo.yaml'}", f"name={name}", f"out_dir={work / 'runs'}",
            f"data.root={root}", f"data.image_size={s['image_size']}", f"data.batch_size={s['batch']}",
            f"data.epoch_samples={s['epoch']}", f"teachers=[{tlist}]", f"optim.steps={s['steps']}",
            "optim.warmup_steps=2", "log.progress=off", "resume=never", "log.checkpoint_interval=100000",
            f"heads.stats_samples={min(256, 2 * s['batch'])}"]
    if s["student"]:
        args.append(f"student.model_args={s['student']}")
    if realistic:
        args += ["student.model=vit_base_patch16_224",
                 "student.model_args={patch_size: 16, embed_dim: 768, depth: 12, num_heads: 12, dynamic_img_size: true}"]
    return load_config(Recipe, args + list(extra))


# --------------------------------------------------------------------------------------------- (a) reader
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
             ">= 1.0x plain", max(ours) >= 0.95 * max(plain), rounds_ours=ours, rounds_plain=plain)
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


# --------------------------------------------------------------------------------------------- training runs
def run_train(cfg) -> Dict[str, Any]:
    """agglom's loop; per-step seconds from the batch clock, FLOPs/sample from run.json."""
    import shutil

    from agglom.train.loop import train

    shutil.rmtree(Path(cfg.out_dir) / cfg.name, ignore_errors=True)  # each timed round trains from scratch
    clock = StepClock()
    with quiet():
        run_dir = train(cfg, hooks=[clock])
    summary = json.loads((Path(run_dir) / "run.json").read_text())
    return {"step_s": clock.step_seconds(), "flops_per_sample": summary.get("flops_per_sample")}


def run_plain(cfg, device: str) -> Dict[str, Any]:
    """The minimal loop: the same task (AgglomTask's model + objective), teachers and loader, AdamW, clip."""
    import torch

    from agglom.data.readers import train_loader
    from agglom.task import AgglomTask, teacher_spec
    from agglom.train.loop import seed_everything
    from agglom.train.optim import param_groups
    from agglom.train.setup import build_teachers, group_names, in_chans_of, stats_batches

    seed_everything(cfg.seed * 1000)
    dev = torch.device(device)
    teachers = build_teachers(cfg, dev)
    task = AgglomTask(cfg, [teacher_spec(e, teachers[e.name]) for e in cfg.teachers], teachers, group_names(cfg),
                      in_chans_of(cfg))
    task.model.to(dev)
    use_bf16 = dev.type == "cuda"
    task.attach(task.model, dev, torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16))
    task.fit_normalisers(stats_batches(cfg))
    opt = torch.optim.AdamW(param_groups(task.model, cfg.optim.weight_decay), lr=cfg.optim.lr)
    task.train()
    steps, epoch = 0, 0
    clock = StepClock()
    while steps < cfg.optim.steps:
        for batch in train_loader(cfg, epoch=epoch):
            clock.on_batch(batch)
            loss = task(batch)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(task.model.parameters(), cfg.optim.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.item()
            steps += 1
            if steps >= cfg.optim.steps:
                break
        epoch += 1
    return {"step_s": clock.step_seconds()}


def interleave(runs: Dict[str, Callable[[], Dict[str, Any]]], rounds: int) -> Dict[str, Dict[str, Any]]:
    """Run each configuration `rounds` times, alternating, pooling the per-step times."""
    out: Dict[str, Dict[str, Any]] = {k: {"step_s": []} for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            r = fn()
            out[k]["step_s"] += r["step_s"]
            for kk, v in r.items():
                if kk != "step_s":
                    out[k][kk] = v
    return out


def write_train_cache(cfg, teachers: Sequence[str], out: Path, device: str, dtype: str = "int8",
                      batch_size: int = 64) -> float:
    from agglom.cache.writer import write_cache

    t = time.perf_counter()
    with quiet():
        write_cache(cfg, list(teachers), str(out), dtype=dtype, pool=1, splits=[cfg.data.train_split],
                    batch_size=batch_size, device=device)
    return time.perf_counter() - t


# --------------------------------------------------------------------------------------------- (f) bytes
def bench_bytes(rows: Rows, cfg, teachers: Sequence[str], out: Path, device: str) -> None:
    import torch
    import torch.nn.functional as F

    import teachers as zoo
    from agglom.cache import open_cache
    from agglom.cache.codec import pool_spatial
    from agglom.cache.writer import write_cache
    from agglom.data.readers import eval_loader

    split = cfg.data.val_split
    batches = list(eval_loader(cfg, split))
    for t in teachers:
        card = zoo.load_card(t)
        online = zoo.build_teacher(card, input_mean=list(cfg.student.mean), input_std=list(cfg.student.std),
                                   device=device)
        with torch.no_grad():
            outs = [online(b["image"].to(device)) for b in batches]
        ref_s = torch.cat([o.summary.float().cpu() for o in outs])
        ref_p = torch.cat([o.spatial.float().cpu() for o in outs])
        keys = [k for b in batches for k in b["key"]]
        bf16 = 2 * (ref_s.shape[1] + ref_p[0].numel())
        for label, dtype, pool in (("fp16", "fp16", 1), ("int8", "int8", 1), ("int8+pool2", "int8", 2)):
            d = out / f"{label}"
            with quiet():
                write_cache(cfg, [t], str(d), dtype=dtype, pool=pool, splits=[split], device=device,
                            batch_size=int(cfg.data.batch_size))
            c = open_cache(str(d), t, cfg, card.digest(), split=split)
            got = c.lookup(keys)
            cos_s = F.cosine_similarity(got["summary"], ref_s, dim=-1)
            cos_p = F.cosine_similarity(got["spatial"], pool_spatial(ref_p, pool), dim=1).flatten(1).mean(1)
            full = F.interpolate(got["spatial"], size=ref_p.shape[-2:], mode="bilinear", align_corners=False) \
                if pool > 1 else got["spatial"]
            cos_full = F.cosine_similarity(full, ref_p, dim=1).flatten(1).mean(1)
            cos = min(float(cos_s.mean()), float(cos_p.mean()))
            nbytes = float(c.manifest["bytes_per_sample"])
            ok = cos >= 0.99 and nbytes <= 0.25 * bf16
            rows.add("f", f"cache {card.name} {label} (cos {cos:.4f}; full-grid cos {float(cos_full.mean()):.4f})",
                     nbytes, float(bf16), "B/sample", "cos>=0.99 at <=0.25x bf16", ok,
                     summary_cos=float(cos_s.mean()), spatial_cos=float(cos_p.mean()),
                     spatial_cos_min=float(cos_p.min()), full_grid_cos=float(cos_full.mean()),
                     disk_bytes_per_sample=c.manifest.get("disk_bytes_per_sample"), samples=len(keys))


# --------------------------------------------------------------------------------------------- main
def run(opts: Dict[str, Any]) -> Dict[str, Any]:
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
    from agglom.data.synth import SynthParams, write_synth
    from benchmarks.highres import bench_highres
    from benchmarks.phases import bench_phases

    s = sizes(opts)
    realistic = opts["size"] == "realistic"
    rows = Rows()
    t_start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="agglom-bench-")
    work = Path(tmp)
    print(f"bench: device={device} size={opts['size']} quick={opts['quick']} steps={s['steps']} "
          f"batch={s['batch']} image={s['image_size']} torch threads={torch.get_num_threads()} work={work}", flush=True)
    root = work / "synth"
    t = time.perf_counter()
    with quiet():
        write_synth(str(root), SynthParams(n=s["n"], image_size=s["image_size"], seed=0), shard_size=s["shard"])
    print(f"  synthetic data: {s['n']} samples in {time.perf_counter() - t:.1f}s", flush=True)
    cards = work / "cards"
    cards.mkdir()
    if realistic:
        teachers = realistic_cards(cards, device == "cuda")
    else:
        teachers = ["tiny-clip", "tiny-dinov2", "tiny-sam"]
    rss0 = peak_rss_mib()
    gemm = gemm_rate(device)
    rows.add("g", "GEMM rate, the FLOP ceiling (" + ("bf16 8192^2" if device == "cuda" else "fp32 2048^2") + ")",
             gemm / 1e9, None, "GFLOP/s")

    # (a) reader
    bench_reader(rows, root, work, s, s["rounds"])

    # (b) + (c): online vs cached teachers; agglom loop vs plain loop (interleaved)
    cache_dir = work / "cache"
    cfg_on = make_cfg(root, work, s, "online", teachers, realistic=realistic)
    cache_s = write_train_cache(cfg_on, teachers, cache_dir, device, batch_size=s["batch"])
    cfg_ca = make_cfg(root, work, s, "cached", teachers, cache=str(cache_dir), realistic=realistic)
    print(f"  cache written (int8, train split) in {cache_s:.1f}s; training runs ...", flush=True)
    res = interleave({"online": lambda: run_train(cfg_on), "cached": lambda: run_train(cfg_ca),
                      "plain": lambda: run_plain(cfg_on, device)}, s["rounds"])
    b = s["batch"]
    r_on, r_ca, r_pl = (median_rate(res[k]["step_s"], b) for k in ("online", "cached", "plain"))
    tname = "ViT-B/L teachers" if realistic else "tiny demo teachers"
    rows.add("b", f"train samples/s, cached vs online ({tname})", r_ca, r_on, "samples/s", ">= 3x",
             r_ca >= 3 * r_on, cache_write_s=cache_s)
    rows.add("c", "engine overhead: agglom loop vs plain PyTorch loop", r_on, r_pl, "samples/s",
             ">= 0.95x (overhead <= 5%)", r_on >= 0.95 * r_pl)
    rss = peak_rss_mib()
    rows.add("e", "peak RSS, training (process; workers max)", rss["self"], rss0["self"], "MiB", "", None,
             children_mib=rss["children"], note="baseline = peak RSS before any training (imports + data)")
    for k, rate in (("online", r_on), ("cached", r_ca)):
        fps = res[k].get("flops_per_sample")
        if fps:
            util = fps * rate / gemm
            rows.add("g", f"FLOP utilisation, training ({k} teachers)", fps * rate / 1e9, gemm / 1e9, "GFLOP/s",
                     "", None, ratio=util, flops_per_sample=fps)

    bench_phases(rows, root, work, s, teachers, cache_dir, realistic)  # (h) where the step's time goes

    # (b') teachers whose forward dominates (the demo's tiny teachers cost less than the student)
    if s["wide"]:
        wide = wide_cards(cards)
        wcache = work / "cache-wide"
        cfg_won = make_cfg(root, work, s, "wide-online", wide)
        wcache_s = write_train_cache(cfg_won, wide, wcache, device)
        cfg_wca = make_cfg(root, work, s, "wide-cached", wide, cache=str(wcache))
        ws = dict(s, steps=max(6, s["steps"] // 2))
        cfg_won.optim.steps = cfg_wca.optim.steps = ws["steps"]
        wres = interleave({"online": lambda: run_train(cfg_won), "cached": lambda: run_train(cfg_wca)}, s["rounds"])
        w_on, w_ca = (median_rate(wres[k]["step_s"], b) for k in ("online", "cached"))
        fps = wres["online"].get("flops_per_sample") or 0
        fps_c = wres["cached"].get("flops_per_sample") or 1
        rows.add("b", f"train samples/s, cached vs online (wide teachers, {fps / fps_c:.1f}x the FLOPs)", w_ca, w_on,
                 "samples/s", ">= 3x", w_ca >= 3 * w_on, cache_write_s=wcache_s, flops_online=fps, flops_cached=fps_c)

    # (d) DeepSpeed ZeRO-2 vs torch (cached teachers, so the step is the student's)
    if opts["ds"]:
        cfg_ds = make_cfg(root, work, s, "ds", teachers, cache=str(cache_dir), realistic=realistic,
                          extra=["engine.name=deepspeed", "engine.zero_stage=2"])
        # not interleaved: the torch strategy's close() destroys the process group DeepSpeed keeps for reuse in
        # this process, so a DeepSpeed run after a torch run that follows a DeepSpeed run fails; torch runs first
        dres = {**interleave({"torch": lambda: run_train(cfg_ca)}, s["rounds"]),
                **interleave({"deepspeed": lambda: run_train(cfg_ds)}, s["rounds"])}
        st = statistics.median(dres["torch"]["step_s"])
        sd = statistics.median(dres["deepspeed"]["step_s"])
        rows.add("d", "step time, DeepSpeed ZeRO-2 vs torch strategy", sd * 1e3, st * 1e3, "ms/step",
                 "<= 1.15x", sd <= 1.15 * st)

    # (f) cache bytes and fidelity
    bench_bytes(rows, cfg_on, teachers, work / "bytes", device)

    bench_highres(rows, work, cards, opts["quick"])  # (i) high-resolution shards' memory, SAM at 1024 px

    total = time.perf_counter() - t_start
    report = {"options": opts, "sizes": s, "device": device, "torch_threads": torch.get_num_threads(),
              "seconds": total, "rows": rows.rows,
              "note": "ratios are measured in one process; per-step rates are medians of interleaved runs"}
    if opts["out"]:
        Path(opts["out"]).write_text(json.dumps(report, indent=1, default=str))
    print("\n" + rows.table(), flush=True)
    print(f"\nbench: {total:.0f}s; wrote {opts['out']}", flush=True)
    if not opts["keep"]:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    run(parse_args(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
