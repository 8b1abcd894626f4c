"""What every bench section shares: the row table, step clocks, the GEMM ceiling, peak RSS, and the temporary
teacher cards and training configs the sections run on."""
from __future__ import annotations

import contextlib
import io
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]


def parse_options(argv: Sequence[str], defaults: Dict[str, Any], doc: str, prog: str) -> Dict[str, Any]:
    """``key=value`` arguments over ``defaults``, each cast to its default's type (booleans from 1/true/yes/on);
    ``-h`` prints ``doc``; a bare word or an unknown key exits naming the keys."""
    opts = dict(defaults)
    for a in argv:
        if a in ("-h", "--help"):
            print(doc)
            raise SystemExit(0)
        k, sep, v = a.partition("=")
        if not sep:
            raise SystemExit(f"{prog}: expected key=value, got {a!r} (keys: {', '.join(defaults)})")
        if k not in defaults:
            raise SystemExit(f"{prog}: unknown option {k!r} (keys: {', '.join(defaults)})")
        d = defaults[k]
        opts[k] = v.lower() in ("1", "true", "yes", "on") if isinstance(d, bool) else type(d)(v)
    return opts


def masked_test_samples(data: Path, split: str = "test") -> Iterator[Tuple[str, Any, Any, Dict[str, Any]]]:
    """``(key, grey image uint8 [H, W], lesion mask bool [H, W], json metadata)`` of every sample of ``split`` whose
    mask has foreground, read straight from an `agglom data synth` / `data pack` dataset's shards."""
    import io
    import json
    import tarfile

    import numpy as np
    from PIL import Image

    for shard in sorted((Path(data) / split).glob("*.tar")):
        with tarfile.open(shard) as tar:
            files = {m.name: m for m in tar.getmembers()}
            for name in sorted(k for k in files if k.endswith(".mask.png")):
                key = name[: -len(".mask.png")]
                mask = np.asarray(Image.open(io.BytesIO(tar.extractfile(files[name]).read()))) > 127
                if not mask.any():
                    continue
                img = np.asarray(Image.open(io.BytesIO(tar.extractfile(files[key + ".png"]).read())).convert("L"))
                yield key, img, mask, json.loads(tar.extractfile(files[key + ".json"]).read())


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


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status in MiB (``VmRSS`` now, ``VmHWM`` this process's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def json_subprocess(args: Sequence[str], what: str, timeout: float, **env: str) -> Dict[str, Any]:
    """``python -m <args>`` in a fresh interpreter (this checkout first on the path, ``env`` added): the JSON object
    its last stdout line holds. ``what`` names it in the error when it fails. The sections that need a process's own
    peak RSS (i, j) measure in one."""
    import json
    import os
    import subprocess
    import sys

    full = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **env)
    out = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=full, capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"bench: {what} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> Dict[str, float]:
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"self": self_kib / 1024, "children": kids_kib / 1024}



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
    s["gemm_n"] = 1024 if quick else 2048  # the CPU ceiling's GEMM side (a smoke run needs no stable ceiling)
    if opts["steps"]:
        s["steps"] = int(opts["steps"])
    return s


def write_card(cards: Path, base: str, name: str, **over: Any) -> str:
    import yaml

    d = yaml.safe_load((REPO / "teachers" / "cards" / f"{base}.yaml").read_text()) if base else {}
    d.update(over, name=name, weights={"source": "none"},
             provenance="none: random initialisation (agglom bench)", description=f"agglom bench teacher {name}")
    path = cards / f"{name}.yaml"  # load_card reads a card file only by its .yaml suffix
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


