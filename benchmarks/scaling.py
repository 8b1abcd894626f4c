"""Section j: how the training step scales. Step time and peak RSS against the number of online teachers (1, 2, 4),
and peak RSS against the dataset's size (10x the samples in shards of the same size: the reader's memory must not
grow with the data; target within 10%).

Each configuration trains in a fresh interpreter without data workers, so that its peak RSS (``VmHWM``) is its own
(the bench process's peak only grows) and covers the reader, the teachers and the student together.
``python -m benchmarks.scaling train SPEC_JSON`` is that subprocess: it prints one JSON line.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

from benchmarks.common import Rows, json_subprocess, quiet, status_mib, write_card

TEACHER_COUNTS = (1, 2, 4)
DATA_SCALE = 10


def train_peak(spec: Dict[str, Any]) -> Dict[str, Any]:
    """(In the subprocess.) Train ``spec["s"]``'s bench recipe on ``spec["root"]`` with ``spec["teachers"]`` online,
    no data workers (:func:`benchmarks.training.run_train`); the median step time (ms, the first two steps left out)
    and the peak RSS (MiB)."""
    import agglom.train.loop  # noqa: F401  (imported before the RSS baseline, which is then "before training")
    from benchmarks.common import make_cfg
    from benchmarks.training import run_train

    cfg = make_cfg(Path(spec["root"]), Path(spec["work"]), spec["s"], spec["name"], spec["teachers"],
                   extra=["data.num_workers=0"])
    before, t = status_mib("VmRSS"), time.perf_counter()
    steps = run_train(cfg)["step_s"]
    return {"step_ms": 1e3 * statistics.median(steps) if steps else float("nan"), "steps": len(steps),
            "peak_mib": status_mib("VmHWM"), "rss_before_mib": before, "seconds": time.perf_counter() - t}


def measure_train(spec: Dict[str, Any]) -> Dict[str, Any]:
    """:func:`train_peak` in a fresh interpreter (this checkout first on the path, the bench's thread count)."""
    return json_subprocess(["benchmarks.scaling", "train", json.dumps(spec)], "(j) the training subprocess", 900)


def teacher_sets(cards: Path) -> Dict[int, List[str]]:
    """1, 2 and 4 online teachers: the demo's tiny cards, and a second tiny DINOv2 under its own name as the fourth."""
    fourth = write_card(cards, "tiny-dinov2", "bench-tiny-dinov2-b")
    four = ["tiny-clip", "tiny-dinov2", "tiny-sam", fourth]
    return {k: four[:k] for k in TEACHER_COUNTS}


def bench_scaling(rows: Rows, root: Path, work: Path, s: Dict[str, Any], cards: Path) -> None:
    """Section j's rows: step time and peak RSS at 2 and 4 teachers against 1, and peak RSS over 10x the samples."""
    from agglom.data.synth import SynthParams, write_synth

    base = {"work": str(work), "s": s}
    by_k = {k: measure_train({**base, "root": str(root), "name": f"scale-t{k}", "teachers": t})
            for k, t in teacher_sets(cards).items()}
    one = by_k[1]
    for k in TEACHER_COUNTS[1:]:
        rows.add("j", f"step time, {k} vs 1 online teachers (no data workers)", by_k[k]["step_ms"], one["step_ms"],
                 "ms/step", "", None, steps=by_k[k]["steps"])
        rows.add("j", f"peak RSS, {k} vs 1 online teachers", by_k[k]["peak_mib"], one["peak_mib"], "MiB", "", None)
    big = work / "synth-x10"
    with quiet():
        write_synth(str(big), SynthParams(n=DATA_SCALE * s["n"], image_size=s["image_size"], seed=0),
                    shard_size=s["shard"])
    shards = [len(list((r / "train").glob("*.tar"))) for r in (root, big)]
    small = measure_train({**base, "root": str(root), "name": "scale-d1", "teachers": ["tiny-clip"]})
    large = measure_train({**base, "root": str(big), "name": "scale-d10", "teachers": ["tiny-clip"]})
    rows.add("j", f"peak RSS, training over {DATA_SCALE}x the samples ({shards[1]} vs {shards[0]} train shards)",
             large["peak_mib"], small["peak_mib"], "MiB", "<= 1.10x", large["peak_mib"] <= 1.10 * small["peak_mib"],
             samples=[s["n"], DATA_SCALE * s["n"]])


def _main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "train":
        print("usage: python -m benchmarks.scaling train SPEC_JSON", file=sys.stderr)
        return 2
    print(json.dumps(train_peak(json.loads(argv[1]))), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
