"""Per-phase step timing (``log.phases=true``): where a training step's time goes.

The loop owns one :class:`PhaseTimer` and hands it to the task (``task.phases``), which hands it to its model; each
marks the end of a phase with :meth:`PhaseTimer.mark`, which attributes the time since the previous mark to that
phase. At each log interval the loop logs ``phase_s/<name>`` (seconds per optimiser step, averaged since the last
log) and resets. A disabled timer (the default everywhere, so eval and other callers need nothing) returns from
every call after one attribute check: no clock reads, no synchronisation, no dict updates.

On CUDA an enabled timer synchronises the device before each clock read, so a phase's kernels are charged to it
rather than to whichever later phase first waits for them; this costs a little speed, which is why it is off by
default. Under ``engine.compile`` an enabled timer's mark inside the model breaks the compiled graph in two.
"""
from __future__ import annotations

import time
from typing import Dict, Optional

import torch

#: the phases of one step, in order: batch wait, teacher forward or cache read, student forward to tokens,
#: heads + normalisers + losses + objective, backward, optimiser step + EMA
PHASES = ("data", "teachers", "student", "heads_loss", "backward", "optimiser")


class PhaseTimer:
    """Accumulates seconds per phase between logged steps; every method is a no-op when ``enabled`` is False."""

    def __init__(self, enabled: bool = False, device: Optional[torch.device] = None) -> None:
        self.enabled = bool(enabled)
        self.sync = self.enabled and device is not None and torch.device(device).type == "cuda"
        self.totals: Dict[str, float] = {}
        self.steps = 0
        self.t = time.perf_counter()

    def _now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self) -> None:
        """Re-anchor the clock: what ran since the last mark is charged to no phase (e.g. logging between steps)."""
        if not self.enabled:
            return
        self.t = self._now()

    def mark(self, phase: str) -> None:
        """The time since the previous mark (or :meth:`start`) was spent in ``phase``."""
        if not self.enabled:
            return
        now = self._now()
        self.totals[phase] = self.totals.get(phase, 0.0) + (now - self.t)
        self.t = now

    def add(self, phase: str, seconds: float) -> None:
        """Charge ``seconds`` measured elsewhere to ``phase`` (the data wait, which the loop's Throughput times)."""
        if not self.enabled:
            return
        self.totals[phase] = self.totals.get(phase, 0.0) + float(seconds)

    def stepped(self) -> None:
        """One optimiser step finished (the unit the logged figures are per)."""
        if not self.enabled:
            return
        self.steps += 1

    def lap(self) -> Dict[str, float]:
        """``{"phase_s/<name>": seconds per step}`` for the phases marked since the last lap, in step order; resets.
        Empty when disabled."""
        if not self.enabled:
            return {}
        n = max(self.steps, 1)
        order = list(PHASES) + sorted(set(self.totals) - set(PHASES))
        out = {f"phase_s/{p}": self.totals[p] / n for p in order if p in self.totals}
        self.totals, self.steps = {}, 0
        return out


#: the timer of every caller that sets none (eval, export, probes): disabled, shared, never written
OFF = PhaseTimer(False)
