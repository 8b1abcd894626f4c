"""What a run's training cost in energy and emissions, as ``run.json`` records it (``energy``) and the model card
states it (agglom/export/cost.py).

- Measured where the kernel exposes it: the CPU packages' RAPL energy counters
  (``/sys/class/powercap/intel-rapl:<N>/energy_uj``, the top-level package domains only: their sub-domains, core and
  uncore, are parts of the package's figure). They are read when the run starts or resumes and at every checkpoint,
  so the measured joules cover the same optimiser steps as ``train_seconds`` and survive a resume the way it does
  (both are saved in the checkpoint's state). A counter wraps at its ``max_energy_range_uj``; one lap is corrected
  for that. RAPL counts the whole package: anything else the machine runs meanwhile is in the figure.
- Estimated where it does not (no powercap tree, counters readable by root only — the default on kernels since
  2020 — or a run over several processes, whose packages one process cannot attribute): seconds × devices × a
  stated power, :data:`DEFAULT_TRAIN_WATTS` by device type. On a GPU the board's energy is always this estimate
  (RAPL does not see it); the CPU packages' measured energy is added when it was read.
- Emissions: kWh × a grid carbon intensity, :data:`DEFAULT_GRID_INTENSITY` (gCO2e/kWh), recorded with the figure;
  ``agglom export grid_gco2_per_kwh=`` restates it for the card's grid.

Reading the counters touches no random stream and no tensor: training's numerics are those of a run without it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

#: the powercap tree RAPL's counters appear under (a test points it elsewhere)
RAPL_ROOT = Path("/sys/class/powercap")
#: a desktop CPU package's thermal design power (a 65 W Core i5/i7 or Ryzen 5/7 class part), W
DEFAULT_TDP_WATTS = 65.0
#: power drawn while training, by device type, where nothing is measured (W): the CPU figure above; 300 W is the
#: board power of a data-centre GPU of the V100 / A100-PCIe class
DEFAULT_TRAIN_WATTS = {"cpu": DEFAULT_TDP_WATTS, "cuda": 300.0}
#: gCO2e per kWh: the world-average carbon intensity of electricity generation (IEA, about 475 g/kWh)
DEFAULT_GRID_INTENSITY = 475.0
ENERGY_SCHEMA = "agglom.energy/1"


def rapl_domains(root: Optional[Path] = None) -> List[Path]:
    """The top-level RAPL package domains under ``root`` (default :data:`RAPL_ROOT`) whose ``energy_uj`` this
    process can read."""
    found = []
    for d in sorted(Path(root or RAPL_ROOT).glob("intel-rapl:*")):
        if d.name.count(":") != 1:  # intel-rapl:0:0 (core), :1 (uncore): inside the package's count
            continue
        try:
            int((d / "energy_uj").read_text())
        except (OSError, ValueError):
            continue
        found.append(d)
    return found


def _read_int(path: Path) -> Optional[int]:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


class EnergyMeter:
    """Joules of the CPU packages between two :meth:`lap` calls, from the RAPL counters; ``available`` is False (and
    ``why`` says why) where none can be read."""

    def __init__(self, root: Optional[Path] = None, enabled: bool = True, why_not: str = "") -> None:
        root = Path(root or RAPL_ROOT)
        self.domains = rapl_domains(root) if enabled else []
        self.available = bool(self.domains)
        if why_not:
            self.why = why_not
        elif not Path(root).is_dir():
            self.why = f"no RAPL counters ({root} does not exist)"
        else:
            self.why = "" if self.available else f"no readable RAPL package counter under {root} (root-only?)"
        self.wrap = [_read_int(d / "max_energy_range_uj") for d in self.domains]
        self.last = self._read()

    def _read(self) -> Optional[List[int]]:
        values = [_read_int(d / "energy_uj") for d in self.domains]
        if not self.available or any(v is None for v in values):
            return None
        return [int(v) for v in values if v is not None]

    def lap(self) -> Optional[float]:
        """Joules since the previous lap (or the meter's start); None when the counters cannot be read."""
        now = self._read()
        if now is None or self.last is None:
            self.last = now
            return None
        uj = 0
        for before, after, wrap in zip(self.last, now, self.wrap):
            uj += after - before if after >= before else after + (wrap or 0) - before
        self.last = now
        return uj / 1e6


def energy_record(state: Mapping[str, Any], meter_why: str = "", grid: float = DEFAULT_GRID_INTENSITY) -> Dict[str, Any]:
    """``run.json``'s ``energy``: kWh and gCO2e of the optimiser steps, each part with its method (``rapl`` or
    ``estimate``), from the loop's state (``train_seconds``, ``device``, ``world_size`` and the RAPL joules and the
    seconds they cover, ``rapl_j`` / ``rapl_seconds``)."""
    seconds = float(state.get("train_seconds") or 0.0)
    device = str(state.get("device") or "cpu")
    devices = max(1, int(state.get("world_size") or 1))
    rapl_j, rapl_s = state.get("rapl_j"), float(state.get("rapl_seconds") or 0.0)
    watts = DEFAULT_TRAIN_WATTS.get(device, DEFAULT_TRAIN_WATTS["cuda"])
    parts: List[Dict[str, Any]] = []
    if rapl_j is not None:
        parts.append({"part": "CPU packages", "method": "rapl", "joules": float(rapl_j), "seconds": rapl_s})
    rest = seconds if device != "cpu" else max(0.0, seconds - rapl_s)
    if rest > 0 or not parts:
        what = "CPU" if device == "cpu" else f"{device} device(s)"
        parts.append({"part": what, "method": "estimate", "seconds": rest, "devices": devices, "watts": watts,
                      "joules": rest * devices * watts})
    joules = sum(p["joules"] for p in parts)
    kwh = joules / 3.6e6
    methods = sorted({p["method"] for p in parts}, key=["rapl", "estimate"].index)
    how = {"rapl": "RAPL package energy counters (/sys/class/powercap/intel-rapl:*/energy_uj) read at the start and "
                   "at every checkpoint: the whole CPU package, other processes included",
           "estimate": f"seconds x devices x {watts:g} W, the default power of a {device} device (no meter read"
                       + (f": {meter_why}" if meter_why and "rapl" not in methods else "") + ")"}
    return {"schema": ENERGY_SCHEMA, "seconds": seconds, "device": device, "devices": devices,
            "method": " + ".join(methods), "measured": "rapl" in methods, "parts": parts,
            "how": "; ".join(how[m] for m in methods), "joules": joules, "kwh": kwh,
            "grid_gco2_per_kwh": float(grid), "grid_source": "default: world-average electricity (IEA)",
            "gco2e": kwh * float(grid), "unmetered_because": None if "rapl" in methods else (meter_why or None)}


__all__ = ["EnergyMeter", "energy_record", "rapl_domains", "RAPL_ROOT", "DEFAULT_TDP_WATTS", "DEFAULT_TRAIN_WATTS",
           "DEFAULT_GRID_INTENSITY", "ENERGY_SCHEMA"]
