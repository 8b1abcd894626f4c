"""Bench section (h): where a training step's time goes, per phase (``log.phases=true``), online and cached.

One short run of the bench recipe per mode, logging every step; the first logged step (worker start-up, the FLOP
count) is left out. Each phase's seconds are summed over the remaining steps and divided by their wall time (the
loop's own lap, the same steps), so the fractions show the split and their sum how much of the step the phases
cover (the rest: logging and hooks between steps).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List, Sequence

from agglom.phases import PHASES


def phase_fractions(records: List[Dict[str, Any]], batch: int, skip: int = 1) -> Dict[str, float]:
    """``{phase: fraction of the step time}`` and ``step_s`` (mean seconds per step) from metrics.jsonl step records
    logged every step (``log.interval=1``, one process): a step's wall time is ``batch / samples_per_s``."""
    recs = [r for r in records if "phase_s/data" in r and r.get("samples_per_s")][skip:]
    if not recs:
        raise RuntimeError("bench (h): no step records with phase_s/* after the first")
    wall = sum(batch / r["samples_per_s"] for r in recs)
    out = {p: sum(r.get(f"phase_s/{p}", 0.0) for r in recs) / wall for p in PHASES}
    out["step_s"] = wall / len(recs)
    return out


def phase_run(cfg: Any) -> List[Dict[str, Any]]:
    """Train ``cfg`` (quietly, from scratch) and return its metrics.jsonl records."""
    from agglom.distill import train
    from agglom.train.logger import MetricLogger
    from benchmarks.common import quiet

    shutil.rmtree(Path(cfg.out_dir) / cfg.name, ignore_errors=True)
    with quiet():
        run_dir = train(cfg)
    return MetricLogger.read(Path(run_dir) / "metrics.jsonl")


def bench_phases(rows: Any, root: Path, work: Path, s: Dict[str, Any], teachers: Sequence[str], cache_dir: Path,
                 realistic: bool = False) -> Dict[str, Dict[str, float]]:
    """Rows ``phase <name> (online|cached)`` (fraction of the step) and ``phase sum (...)`` for section h."""
    from benchmarks.common import make_cfg

    extra = ["log.phases=true", "log.interval=1"]
    steps = max(3, int(s["steps"]))  # the first logged step is dropped: at least two are left
    out: Dict[str, Dict[str, float]] = {}
    for mode, cache in (("online", None), ("cached", str(cache_dir))):
        cfg = make_cfg(root, work, s, f"phases-{mode}", teachers, cache=cache, realistic=realistic,
                       extra=extra + [f"optim.steps={steps}"])
        fr = phase_fractions(phase_run(cfg), int(s["batch"]))
        out[mode] = fr
        for p in PHASES:
            rows.add("h", f"phase {p} ({mode})", fr[p], None, "of step", step_ms=fr["step_s"] * 1e3)
        total = sum(fr[p] for p in PHASES)
        rows.add("h", f"phase sum ({mode}; step {fr['step_s'] * 1e3:.1f} ms)", total, None, "of step",
                 "0.9..1.1 (phases cover the step)", 0.9 <= total <= 1.1, step_ms=fr["step_s"] * 1e3,
                 fractions={p: fr[p] for p in PHASES})
    return out
