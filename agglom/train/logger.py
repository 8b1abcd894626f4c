"""Rank-0 logging: interval lines, `metrics.jsonl`, optional TensorBoard, a progress bar on a TTY.

With ``log.all_ranks=true`` every other rank also writes its own step records (its local loss terms, the input
size it trained at) to ``metrics-rank<r>.jsonl`` beside rank 0's file, so a DDP/DeepSpeed run can be checked rank
by rank (e.g. that all ranks trained at the same size at every step); nothing is printed for those ranks.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, Optional


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricLogger:
    def __init__(self, run_dir: Path, log_cfg: Any, total_steps: int, is_main: bool, start_step: int = 0,
                 rank: int = 0) -> None:
        self.is_main = is_main
        self.rank_file = not is_main and bool(log_cfg.get("all_ranks", False))  # log.all_ranks: this rank's own file
        self.path = Path(run_dir) / ("metrics.jsonl" if is_main else f"metrics-rank{int(rank)}.jsonl")
        self.interval = max(1, int(log_cfg.interval))
        self.tb = None
        self.bar = None
        if not is_main:
            if self.rank_file:
                self._truncate_after(start_step)
            return
        self._truncate_after(start_step)
        if log_cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:
                print("agglom: tensorboard not installed (pip install agglom[tensorboard]); skipping", file=sys.stderr)
        show = log_cfg.progress == "on" or (log_cfg.progress == "auto" and sys.stderr.isatty())
        if show:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines written after the checkpoint so the log matches an uninterrupted run."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("step", 0) <= step:
                keep.append(line)
        self.path.write_text("".join(k + "\n" for k in keep))

    def event(self, record: Dict[str, Any]) -> None:
        """A non-step record (start, resume, skip counts, end) in metrics.jsonl."""
        if self.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")

    def step(self, step: int, metrics: Dict[str, Any], force: bool = False) -> None:
        """Record step ``step``'s metrics every ``log.interval`` steps (and when ``force``): rank 0 to
        metrics.jsonl, TensorBoard and the console; another rank to its own file under ``log.all_ranks``."""
        if not self.is_main:
            if self.rank_file and (step % self.interval == 0 or force):
                with open(self.path, "a") as f:
                    f.write(json.dumps({"step": step, **{k: _clean(v) for k, v in metrics.items()}}) + "\n")
            return
        if self.bar is not None:
            self.bar.update(1)
        if step % self.interval and not force:
            return  # nothing is read back from the device between log steps
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{_clean(metrics.get('loss', float('nan'))) or float('nan'):.4f}")
        rec = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, step)
        main = {k: rec[k] for k in ("loss", "utility", "parity", "lr", "samples_per_s", "data_s") if rec.get(k) is not None}
        line = f"step {step:>6} " + " ".join(f"{k}={v:.4g}" for k, v in main.items())
        teachers = {k.split("/", 1)[1]: v for k, v in rec.items() if k.startswith("teacher/") and v is not None}
        if teachers:
            line += " | " + " ".join(f"{k}={v:.3f}" for k, v in teachers.items())
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()

    @staticmethod
    def read(path: Path) -> list:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def fmt_optional(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.4f}"
