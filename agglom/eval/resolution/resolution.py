"""The mode-switch test: fidelity and the probe against the student's input size, a discontinuity flag, and the
range of sizes the student is validated at (``agglom eval eval.resolutions=[0.5,1,2]``).

Pure functions of the curves (numbers in, numbers out) plus the report's markdown and plot; the pass over the data
is :mod:`agglom.eval.resolution.run`.

**The rules** (stated in the report as :func:`rule_text`):

* *mode switch* — on a curve ``v`` over ascending sizes ``s``, the change between adjacent sizes per octave is
  ``c_i = |v_{i+1} − v_i| / log2(s_{i+1} / s_i)``. Interval ``i`` is a switch when ``|v_{i+1} − v_i| > tol`` (a
  change below the tolerance is noise) *and* ``c_i > jump × median(c_j, j ≠ i)``: the curve moves ``jump`` times
  faster there than anywhere else. A smooth degradation (fidelity falling steadily away from the training size)
  is not a switch; a sudden change of character between two sizes (RADIOv2's at ~720 px) is. Needs three sizes or
  more (with two there is no "elsewhere" to compare with).
* both read the fidelity curves with R² clipped to [0, 1] (as the fidelity headline); the probe's curves are
  reported but flag nothing (too noisy on small test splits) unless there is no fidelity curve.
* *validated range* — the sizes at which every teacher × output fidelity is within ``tol`` of that curve's best
  size, contiguous around the training size, and not crossing a flagged switch of a fidelity curve. With no
  fidelity curve (``eval.fidelity=false``) the probe's AUC takes its place.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np


def rule_text(tol: float, jump: float) -> str:
    """One line naming both rules with their parameters (the report and the model card quote it)."""
    return (f"validated = every fidelity within {tol:g} of its best size, contiguous around the training size; "
            f"switch = an adjacent change > {tol:g} and > {jump:g}x the median per-octave change elsewhere "
            "(fidelity R² clipped to [0, 1])")


def eval_sizes(base: int, multiples: Sequence[float], patch: int) -> List[int]:
    """Input sizes (px) for ``multiples`` of the training size ``base``, each rounded to a multiple of ``patch``
    (at least one patch), ascending and distinct."""
    sizes = {max(patch, int(round(float(m) * base / patch)) * patch) for m in multiples}
    return sorted(sizes)


def _finite(values: Sequence[Optional[float]]) -> np.ndarray:
    return np.asarray([np.nan if v is None else float(v) for v in values], dtype=float)


def find_switches(sizes: Sequence[int], values: Sequence[Optional[float]], tol: float = 0.02,
                  jump: float = 3.0) -> List[Dict[str, Any]]:
    """The intervals of one curve flagged as a mode switch (see the module docstring):
    ``[{"from": size, "to": size, "change": v_to − v_from, "per_octave": c, "elsewhere": median}]``."""
    v = _finite(values)
    s = np.asarray(sizes, dtype=float)
    if len(v) < 3 or len(v) != len(s):
        return []
    delta = np.diff(v)
    rate = np.abs(delta) / np.log2(s[1:] / s[:-1])
    out = []
    for i in range(len(delta)):
        others = np.delete(rate, i)
        others = others[np.isfinite(others)]
        if not np.isfinite(rate[i]) or not others.size:
            continue
        elsewhere = float(np.median(others))
        if abs(delta[i]) > tol and rate[i] > jump * elsewhere:
            out.append({"from": int(sizes[i]), "to": int(sizes[i + 1]), "change": float(delta[i]),
                        "per_octave": float(rate[i]), "elsewhere": elsewhere})
    return out


def within_tolerance(values: Sequence[Optional[float]], tol: float) -> List[Optional[bool]]:
    """Per size: is the value within ``tol`` of the curve's best (None where the value is undefined)."""
    v = _finite(values)
    if not np.isfinite(v).any():
        return [None] * len(v)
    best = float(np.nanmax(v))
    return [None if not math.isfinite(x) else bool(x >= best - tol) for x in v]


def validated_range(sizes: Sequence[int], curves: Mapping[str, Sequence[Optional[float]]], base: int, tol: float,
                    switches: Sequence[Mapping[str, Any]] = ()) -> Optional[List[int]]:
    """``[lo, hi]`` px: the contiguous run of sizes around the one nearest ``base`` where every curve is within
    ``tol`` of its best (undefined values do not count against a size), cut at the given switches; None when the
    size nearest ``base`` itself fails."""
    n = len(sizes)
    ok = [True] * n
    for values in curves.values():
        for i, w in enumerate(within_tolerance(values, tol)):
            if w is False:
                ok[i] = False
    cut = {(int(sw["from"]), int(sw["to"])) for sw in switches}
    i0 = int(np.argmin([abs(math.log2(s / base)) for s in sizes]))
    if not ok[i0]:
        return None
    lo = hi = i0
    while lo > 0 and ok[lo - 1] and (sizes[lo - 1], sizes[lo]) not in cut:
        lo -= 1
    while hi < n - 1 and ok[hi + 1] and (sizes[hi], sizes[hi + 1]) not in cut:
        hi += 1
    return [int(sizes[lo]), int(sizes[hi])]


def _clip(values: Sequence[Optional[float]]) -> List[Optional[float]]:
    """R² clipped to [0, 1] for the flags, as the fidelity headline does: "worse than the teacher's mean" is no
    fidelity, and an output the student has not learned (R² far below 0) must not decide them on its own."""
    return [None if v is None else min(1.0, max(0.0, float(v))) for v in values]


def resolution_section(base: int, multiples: Sequence[float], sizes: Sequence[int], read_at: int,
                       fidelity: Mapping[str, Sequence[Optional[float]]], probe_auc: Sequence[Optional[float]],
                       worst_group_auc: Mapping[str, Sequence[Optional[float]]], tol: float = 0.02,
                       jump: float = 3.0) -> Dict[str, Any]:
    """The report's ``resolution`` section from the measured curves (one value per size in ``sizes``).

    The flags (switches, tolerance, range) read the fidelity curves, clipped to [0, 1]; the probe's curves are
    reported beside them but flag nothing (on a test split of tens of samples, their sampling noise is as large as
    the changes), except the probe AUC where there is no fidelity curve (``eval.fidelity=false``)."""
    curves = {f"fidelity:{k}": _clip(v) for k, v in fidelity.items()} or {"probe:auc": list(probe_auc)}
    switches = [{"curve": name, **sw} for name, values in curves.items()
                for sw in find_switches(sizes, values, tol, jump)]

    def plain(vals: Sequence[Optional[float]]) -> List[Optional[float]]:
        return [None if v is None else float(v) for v in vals]

    return {
        "base": int(base), "multiples": [float(m) for m in multiples], "sizes": [int(s) for s in sizes],
        "read_at": int(read_at), "measure": "fidelity: global-normalised R² (as the fidelity section); probe: the "
                                            "linear probe of the classification section, refitted at each size",
        "fidelity": {k: plain(vals) for k, vals in fidelity.items()},
        "probe": {"auc": plain(probe_auc), "worst_group_auc": {a: plain(v) for a, v in worst_group_auc.items()}},
        "within_tol": {k: within_tolerance(v, tol) for k, v in curves.items()},
        "switches": switches,
        "validated_range": validated_range(sizes, curves, base, tol, switches),
        "tol": float(tol), "jump": float(jump), "rule": rule_text(tol, jump),
    }


def _num(v: Any) -> str:
    return "undefined" if v is None else f"{float(v):.3f}"


def resolution_markdown(sec: Mapping[str, Any]) -> List[str]:
    """The report.md section: one row per curve, one column per size, then the switches and the range."""
    sizes = sec["sizes"]
    head = "| curve | " + " | ".join(f"{s} px" + (" (train)" if s == sec["base"] else "") for s in sizes) + " |"
    rows = [head, "|---|" + "---|" * len(sizes)]
    for k, vals in sec["fidelity"].items():
        rows.append(f"| fidelity {k} | " + " | ".join(map(_num, vals)) + " |")
    rows.append("| probe AUC | " + " | ".join(map(_num, sec["probe"]["auc"])) + " |")
    for a, vals in sec["probe"]["worst_group_auc"].items():
        rows.append(f"| probe worst-group AUC ({a}) | " + " | ".join(map(_num, vals)) + " |")
    rng = sec.get("validated_range")
    sw = sec.get("switches") or []
    return ["## Resolution: fidelity and probe against the student's input size", "",
            f"Training size {sec['base']} px; images read at {sec['read_at']} px and resized (antialiased) to each "
            f"size; {sec['measure']}. Rule: {sec['rule']}.", "", *rows, "",
            f"Validated range: {f'{rng[0]}–{rng[1]} px' if rng else 'none'}. Mode switches flagged: "
            + ("; ".join(f"{s['curve']} {s['from']}→{s['to']} px ({s['change']:+.3f})" for s in sw) or "none") + ".",
            "", "![resolution](resolution.png)", ""]


def plot_resolution(sec: Mapping[str, Any], path: str | os.PathLike) -> str:
    """Fidelity (left, clipped as the flags read it) and the probe (right) against the input size (log2 axis);
    the validated range shaded green, flagged switches red."""
    from agglom.eval.figure import _save, plt

    sizes = sec["sizes"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    panels = [(axes[0], {k: _clip(v) for k, v in sec["fidelity"].items()}, "fidelity (global R², clipped to [0, 1])"),
              (axes[1], {"AUC": sec["probe"]["auc"], **{f"worst-group AUC ({a})": v for a, v in
                                                        sec["probe"]["worst_group_auc"].items()}}, "probe")]
    rng = sec.get("validated_range")
    for ax, curves, label in panels:
        for name, vals in curves.items():
            ax.plot(sizes, [np.nan if v is None else v for v in vals], marker="o", label=name)
        if rng:
            ax.axvspan(rng[0], rng[1], color="tab:green", alpha=0.1, label="validated range")
        for sw in sec.get("switches") or []:
            ax.axvspan(sw["from"], sw["to"], color="tab:red", alpha=0.15)
        ax.axvline(sec["base"], color="k", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(s) for s in sizes])
        ax.set_xlabel("student input size (px)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle("resolution curve (red: flagged mode switch)")
    return _save(fig, path)


__all__ = ["rule_text", "eval_sizes", "find_switches", "within_tolerance", "validated_range", "resolution_section",
           "resolution_markdown", "plot_resolution"]
