"""What the student costs to run next to the teachers it replaces, and what training it cost (the model card's
"Compute and energy" section, and ``cost.json`` in the export).

- Parameters and FLOPs per image: the student with its adapter heads at its (largest) training size, counted by
  ``torch.utils.flop_counter`` (as the training loop counts its FLOPs,
  :meth:`agglom.distill.task.AgglomTask.flops_per_sample`); each teacher's the same way at the same input, built on
  the meta device (no weights loaded, no memory), so a teacher whose weights are not on this machine is still
  counted; a family that cannot be built there is "n/a".
- Latency: the median of ``runs`` timed forwards of one image on this machine's CPU (PyTorch), on ``latency_threads``
  threads (default 1: a figure that does not swing with what else the machine runs — on a loaded 2-core machine two
  threads took 0.2–0.3 s for a forward one thread did in 1–1.5 ms; 0: PyTorch's own thread count).
- Energy per image: latency × a *stated* power (``tdp_watts``, default :data:`DEFAULT_TDP_WATTS`); for a teacher, the
  student's energy scaled by their FLOP ratio: an estimate, no meter is read for it.
- Training: the energy ``run.json`` recorded (``energy``, agglom/train/energy.py): the CPU packages' RAPL counters
  where training could read them, else the run's optimiser-step time (``train_seconds``) × devices × the device's
  default power. ``train_watts=`` replaces that record with seconds × devices × the stated power (a run with no
  record, from before it was kept, is estimated the same way, default by device, :data:`DEFAULT_TRAIN_WATTS`);
  kWh × a grid carbon intensity (``grid_gco2_per_kwh``, default :data:`DEFAULT_GRID_INTENSITY`) → gCO2e.
  codecarbon is not used: it requires pandas, pydantic, requests and more, and its default tracker finds the
  machine's location over the network, which agglom never does at run time (docs/guide/deploy.md).
"""
from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional

import torch

from agglom.train.energy import DEFAULT_GRID_INTENSITY, DEFAULT_TDP_WATTS, DEFAULT_TRAIN_WATTS


def count_flops(fn: Any, x: torch.Tensor) -> float:
    """FLOPs of ``fn(x)`` (torch.utils.flop_counter: matmuls and convolutions, 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(x)
    return float(counter.get_total_flops())


def cpu_latency(fn: Any, x: torch.Tensor, runs: int = 10, warmup: int = 3) -> float:
    """Median seconds of ``fn(x)`` over ``runs`` timed calls after ``warmup`` untimed ones; each call gets its own
    copy of ``x``, so no per-batch memo (``AgglomModel.tokens``) can answer from the previous call."""
    times = []
    with torch.no_grad():
        for i in range(max(1, runs) + warmup):
            xi = x.clone()
            t = time.perf_counter()
            fn(xi)
            if i >= warmup:
                times.append(time.perf_counter() - t)
    return float(statistics.median(times))


@contextmanager
def threads(n: int) -> Iterator[int]:
    """PyTorch's intra-op threads set to ``n`` for the block (0: left as they are); yields the count in force."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def student_cost(model: Any, size: int, tdp_watts: float, runs: int = 10, n_threads: int = 1) -> Dict[str, Any]:
    """Parameters, FLOPs, CPU latency (``n_threads`` threads) and energy of one image through the student and its
    adapter heads."""
    model = model.eval().cpu()
    c = model.student.patch_embed.proj.in_channels
    x = torch.randn(1, c, size, size, generator=torch.Generator().manual_seed(0))
    backbone = sum(p.numel() for p in model.student.parameters())
    total = sum(p.numel() for n, p in model.named_parameters())
    with threads(n_threads) as used:
        seconds = cpu_latency(model, x, runs)
    return {"size": size, "params": int(total), "params_backbone": int(backbone), "flops": count_flops(model, x.clone()),
            "latency_s": seconds, "threads": used, "joules": seconds * tdp_watts}


@contextmanager
def _offline() -> Iterator[None]:
    """No hub look-up while a teacher is built on the meta device (an offline machine must not wait on retries)."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub

        before, hub.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE, True
    except (ImportError, AttributeError):
        hub, before = None, None
    try:
        yield
    finally:
        if hub is not None:
            hub.HF_HUB_OFFLINE = before
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def teacher_cost(name: str, size: int, mean: List[float], std: List[float]) -> Dict[str, Any]:
    """A teacher's parameters and FLOPs for one image of ``size`` px, built on the meta device; ``{"error": why}``
    for one that cannot be built there."""
    try:
        import teachers as zoo
        from teachers.registry import get_family

        card = zoo.load_card(name)
        with _offline(), torch.device("meta"):
            t = get_family(card.family)(card, mean, std, device="meta", load_weights=False)
            x = torch.empty(1, len(mean), size, size, device="meta")
            flops = count_flops(t, x)
        return {"name": name, "params": int(sum(p.numel() for p in t.parameters())), "flops": flops,
                "input_size": list(t.input_size)}
    except Exception as e:  # noqa: BLE001 - a family that cannot build on meta, a card that is gone: not counted
        return {"name": name, "error": (str(e).splitlines() or [type(e).__name__])[0][:160]}


def training_cost(summary: Mapping[str, Any], watts: Optional[float], intensity: float) -> Dict[str, Any]:
    """kWh and gCO2e of the run's optimiser steps: the energy ``run.json`` recorded (RAPL-measured or estimated,
    ``method``), or seconds × devices × ``watts`` when they are stated (or no energy was recorded), × the grid's
    intensity."""
    device = str(summary.get("device") or "cpu")
    w = float(watts) if watts is not None else DEFAULT_TRAIN_WATTS.get(device, DEFAULT_TRAIN_WATTS["cuda"])
    seconds = float(summary.get("train_seconds") or 0.0)
    devices = max(1, int(summary.get("world_size") or 1))
    record = summary.get("energy") if isinstance(summary.get("energy"), Mapping) else None
    if record is not None and watts is None and record.get("kwh") is not None:
        kwh, method = float(record["kwh"]), str(record.get("method") or "estimate")
        how = str(record.get("how") if "rapl" in method else record.get("unmetered_because") or "")
    else:
        kwh, method, how = seconds * devices * w / 3.6e6, "estimate", ""
    return {"seconds": seconds, "devices": devices, "device": device, "watts": w, "watts_stated": watts is not None,
            "method": method, "how": how, "recorded": record is not None and watts is None, "kwh": kwh,
            "grid_gco2_per_kwh": float(intensity), "gco2e": kwh * float(intensity)}


def _training_row(tr: Mapping[str, Any]) -> str:
    """The card's training line: measured (RAPL) or estimated, and from what."""
    head = f"Training: {tr['seconds']:.1f} s of optimiser steps × {tr['devices']} {tr['device']} device(s)"
    tail = (f"{tr['kwh']:.3g} kWh ≈ {tr['gco2e']:.3g} gCO2e at {tr['grid_gco2_per_kwh']:g} gCO2e/kWh "
            "(`grid_gco2_per_kwh`)")
    if "rapl" in str(tr.get("method", "")):
        return (f"{head}: {tail}, measured while training ({tr['method']}: {tr['how']}; run.json's `energy`). It "
                "leaves out the statistics pass, evaluation and idle time.")
    where = ("stated, `train_watts`" if tr["watts_stated"] else "default for the device type")
    why = f" ({tr['how']})" if tr.get("how") else ""  # why no counter was read while training
    return (f"{head} × {tr['watts']:g} W ({where}) = {tail}. An estimate from stated figures, not a metered "
            f"measurement{why}; it leaves out the statistics pass, evaluation and idle time.")


def cost_report(model: Any, cfg: Any, summary: Mapping[str, Any], tdp_watts: float = DEFAULT_TDP_WATTS,
                train_watts: Optional[float] = None, grid_intensity: float = DEFAULT_GRID_INTENSITY,
                runs: int = 10, n_threads: int = 1) -> Dict[str, Any]:
    """Everything :func:`card_rows` states, as ``cost.json`` records it."""
    from agglom.export.input_sizes import trained_sizes

    size = max(trained_sizes(cfg))
    student = student_cost(model, size, tdp_watts, runs, n_threads)
    c = model.student.patch_embed.proj.in_channels
    mean, std = list(cfg.student.mean)[:c], list(cfg.student.std)[:c]
    teachers = [teacher_cost(s.name, int(cfg.data.image_size), mean, std) for s in model.specs]
    for t in teachers:
        if "flops" in t and student["flops"]:
            t["joules_flop_scaled"] = student["joules"] * t["flops"] / student["flops"]
    return {"tdp_watts": float(tdp_watts), "student": student, "teachers": teachers,
            "training": training_cost(summary, train_watts, grid_intensity)}


def _g(v: float) -> str:
    return f"{v / 1e9:.3g} G" if v >= 1e8 else f"{v / 1e6:.3g} M"


def card_rows(cost: Mapping[str, Any]) -> List[str]:
    """The model card's "Compute and energy" section."""
    s, tr, w = cost["student"], cost["training"], cost["tdp_watts"]
    rows = [f"Per image at {s['size']} px (FLOPs by torch.utils.flop_counter, 2 per multiply-add; energy = CPU "
            f"latency × a stated {w:g} W, `tdp_watts` — for a one-thread latency an upper bound; a teacher's energy is "
            "the student's scaled by the FLOP ratio):", "",
            "| model | parameters | FLOPs / image | CPU latency / image | energy / image |", "|---|---|---|---|---|",
            f"| student + adapter heads | {_g(s['params'])} ({_g(s['params_backbone'])} backbone) | {_g(s['flops'])} | "
            f"{s['latency_s'] * 1e3:.2f} ms ({s['threads']} thread{'s' if s['threads'] != 1 else ''}) | {s['joules']:.3g} J |"]
    known = [t for t in cost["teachers"] if "flops" in t]
    for t in cost["teachers"]:
        if "flops" in t:
            rows.append(f"| teacher {t['name']} (at {t['input_size'][0]}×{t['input_size'][1]}) | {_g(t['params'])} | "
                        f"{_g(t['flops'])} | not measured | ≈ {t.get('joules_flop_scaled', 0):.3g} J (FLOP-scaled) |")
        else:
            rows.append(f"| teacher {t['name']} | n/a | n/a | not measured | n/a ({t['error']}) |")
    if known and s["flops"]:
        total = sum(t["flops"] for t in known)
        rows += ["", f"The {len(known)} counted teacher(s) together: {_g(total)}FLOPs per image, "
                 f"{total / s['flops']:.3g}× the student's."]
    rows += ["", _training_row(tr)]
    return rows


__all__ = ["cost_report", "card_rows", "student_cost", "teacher_cost", "training_cost", "count_flops", "threads",
           "DEFAULT_TDP_WATTS", "DEFAULT_TRAIN_WATTS", "DEFAULT_GRID_INTENSITY"]
