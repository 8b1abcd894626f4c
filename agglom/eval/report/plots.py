"""Report figures (matplotlib, Agg backend). Each function writes one PNG and returns its path."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from agglom.eval.figure import _save, plt
from agglom.eval.metrics import UNKNOWN, ece_bins
from agglom.eval.resolution.resolution import plot_resolution

__all__ = ["plot_group_auc", "plot_fidelity_heatmap", "plot_calibration", "plot_front", "plot_group_dice"]


def _val(x: Any) -> float:
    return float("nan") if x is None else float(x)


def plot_group_auc(result: Mapping[str, Any], path: str | os.PathLike, title: str = "") -> str:
    """Bar chart of group AUCs with bootstrap CI error bars for one binary result (undefined groups marked),
    with the overall AUC as a dashed line."""
    names = list(result["group_names"])
    vals = np.asarray([_val(result["groups"][g]["auc"]["value"]) for g in names])
    lo = np.zeros(len(names))
    hi = np.zeros(len(names))
    for i, g in enumerate(names):
        ci = result["groups"][g]["auc"].get("ci")
        if ci and np.isfinite(vals[i]):
            lo[i], hi[i] = max(vals[i] - ci[0], 0.0), max(ci[1] - vals[i], 0.0)
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 3.5))
    x = np.arange(len(names))
    ok = np.isfinite(vals)
    ax.bar(x[ok], vals[ok], yerr=[lo[ok], hi[ok]], capsize=4, color="tab:blue", alpha=0.8)
    for i in np.flatnonzero(~ok):
        ax.text(x[i], 0.52, "undefined", rotation=90, ha="center", va="bottom", fontsize=8)
    overall = result["auc"]["value"]
    if overall is not None:
        ax.axhline(overall, color="k", ls="--", lw=1, label=f"overall {overall:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{g}\n(n={result['groups'][g]['n']})" for g in names], fontsize=8)
    ax.set_ylim(0.5 if np.nanmin(np.where(ok, vals - lo, 1.0)) >= 0.5 else 0.0, 1.0)
    ax.set_ylabel("AUC")
    ax.set_title(title or "group AUC (95% CI)")
    return _save(fig, path)


def plot_fidelity_heatmap(fidelity: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> str:
    """Teacher x group heatmap of mean fidelity (``{teacher: group_mean_summary result}`` for one attribute)."""
    teachers = list(fidelity)
    groups: list = []
    for s in fidelity.values():
        groups += [g for g in s["by_group"] if g not in groups]
    M = np.full((len(teachers), len(groups)), np.nan)
    for i, t in enumerate(teachers):
        for j, g in enumerate(groups):
            m = fidelity[t]["by_group"].get(g)
            if m is not None:
                M[i, j] = _val(m["value"])
    fig, ax = plt.subplots(figsize=(max(4, 1.0 * len(groups) + 2.5), max(2.5, 0.6 * len(teachers) + 1.5)))
    im = ax.imshow(np.ma.masked_invalid(M), cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label="fidelity (global-normalised R²)")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(teachers)))
    ax.set_yticklabels(teachers, fontsize=8)
    finite = M[np.isfinite(M)]
    mid = float(finite.mean()) if finite.size else 0.0
    for i in range(len(teachers)):
        for j in range(len(groups)):
            txt = "n/a" if not np.isfinite(M[i, j]) else f"{M[i, j]:.3f}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=7, color="w" if M[i, j] < mid else "k")
    ax.set_title(title or "fidelity: teacher x group")
    return _save(fig, path, crop=True)


def plot_calibration(
    y_true: Any,
    score: Any,
    groups: Any,
    path: str | os.PathLike,
    binning: str = "range10",
    title: str = "",
    unknown: Optional[str] = UNKNOWN,
) -> str:
    """Reliability curves (mean score vs observed positive rate per bin) per group, under a named ECE binning."""
    y = np.asarray(y_true, dtype=float)
    s = np.asarray(score, dtype=float)
    g = np.asarray(groups).astype(str)
    names = sorted(set(g.tolist()) - {unknown}) + ([unknown] if unknown in set(g.tolist()) else [])
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    for name in names:
        m = g == name
        idx, _ = ece_bins(s[m], binning)
        xs, ys = [], []
        for b in np.unique(idx):
            sel = idx == b
            xs.append(s[m][sel].mean())
            ys.append(y[m][sel].mean())
        ax.plot(xs, ys, marker="o", ms=3, lw=1, label=f"{name} (n={int(m.sum())})")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(title or f"reliability per group ({binning})")
    return _save(fig, path)


def plot_front(summary: Mapping[str, Any], path: str | os.PathLike, title: str = "") -> str:
    """Utility (x) vs gap (y) for every candidate of a :func:`pareto.front_summary`; Pareto points joined and
    marked, the minimax-Pareto selection circled."""
    pts = [p for p in summary["points"] if p.get("defined")]
    fig, ax = plt.subplots(figsize=(5, 4))
    other = [p for p in pts if not p["pareto"]]
    front = sorted([p for p in pts if p["pareto"]], key=lambda p: p["utility"])
    if other:
        ax.scatter([p["utility"] for p in other], [p["gap"] for p in other], c="lightgrey", edgecolors="grey",
                   label="dominated")  # fmt: skip
    if front:
        ax.plot([p["utility"] for p in front], [p["gap"] for p in front], "-o", color="tab:red", label="Pareto")
    for p in pts:
        ax.annotate(str(p.get("name")), (p["utility"], p["gap"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    down = [p for p in pts if p.get("levels_down")]
    if down:
        ax.scatter([p["utility"] for p in down], [p["gap"] for p in down], marker="x", s=70, c="k",
                   label="levels down (not selectable)")  # fmt: skip
    sel = [p for p in pts if p.get("name") == summary.get("selected")]
    if sel:
        ax.scatter([sel[0]["utility"]], [sel[0]["gap"]], s=180, facecolors="none", edgecolors="k", lw=1.5,
                   label="minimax-Pareto")  # fmt: skip
    ax.set_xlabel(summary.get("utility_name", "utility") + " (higher is better)")
    ax.set_ylabel(summary.get("gap_name", "gap") + " (lower is better)")
    hv = summary.get("hypervolume")
    ax.set_title(
        title or ("utility-fairness front" + (f", HV={hv:.4f}" if hv is not None and math.isfinite(hv) else ""))
    )
    ax.legend(fontsize=7)
    return _save(fig, path, crop=True)  # point names may run past the axes


def plot_group_dice(models: Mapping[str, Mapping[str, Any]], attr: str, path: str | os.PathLike,
                    title: str = "") -> str:
    """Grouped bars: for each group of ``attr`` the mean Dice of every model (dense section results) with its 95%
    interval, and each model's overall Dice as a dashed line of its colour."""
    names = list(models)
    groups: list = []
    for m in models.values():
        groups += [g for g in m["attributes"][attr]["group_names"] if g not in groups]
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(groups) * max(1, len(names)) * 0.6 + 2), 3.6))
    x = np.arange(len(groups))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, n in enumerate(names):
        r = models[n]["attributes"][attr]
        vals, lo, hi = [], [], []
        for g in groups:
            e = r["groups"].get(g, {}).get("dice") or {}
            v = _val(e.get("value"))
            ci = e.get("ci")
            vals.append(v)
            lo.append(max(v - ci[0], 0.0) if ci and np.isfinite(v) else 0.0)
            hi.append(max(ci[1] - v, 0.0) if ci and np.isfinite(v) else 0.0)
        c = colours[j % len(colours)]
        ax.bar(x + (j - (len(names) - 1) / 2) * width, np.nan_to_num(vals), width, yerr=[lo, hi], capsize=3,
               color=c, alpha=0.85, label=n)
        overall = r["dice"]["value"]
        if overall is not None:
            ax.axhline(overall, color=c, ls="--", lw=0.8)
    ax.set_xticks(x)
    first = models[names[0]]["attributes"][attr]["groups"] if names else {}
    ax.set_xticklabels([f"{g}\n(n={first[g]['n']})" if g in first else str(g) for g in groups], fontsize=8)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("Dice (test, samples with foreground)")
    ax.set_title(title or f"dense probe Dice by {attr} (95% CI)")
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, path)


def plot_dense_overlays(overlays: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> str:
    """A grid: one row per test sample (a few per group, the same for every model), the ground-truth mask, then each
    model's dense-probe mask at its threshold coloured against it — white: both, red: predicted only (false
    positive), blue: missed (false negative) — with the sample's Dice. (The eval keeps no image pixels.)"""
    names = [n for n, o in overlays.items() if o]
    first = overlays[names[0]]
    rows, cols = len(first["keys"]), 1 + len(names)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.4), squeeze=False)
    for r in range(rows):
        gt = np.asarray(first["masks"][r]) > 0
        axes[r, 0].imshow(gt, cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(f"{first['attribute']}={first['groups'][r]}", fontsize=7)
        for c, n in enumerate(names, start=1):
            pred = np.asarray(overlays[n]["pred"][r]).astype(bool)
            rgb = np.zeros((*gt.shape, 3))
            rgb[gt & pred] = (1.0, 1.0, 1.0)
            rgb[pred & ~gt] = (0.9, 0.2, 0.2)
            rgb[gt & ~pred] = (0.2, 0.4, 1.0)
            axes[r, c].imshow(rgb)
            axes[r, c].set_xlabel(f"Dice {float(overlays[n]['dice'][r]):.2f}", fontsize=6, labelpad=1)
    for c, n in enumerate(["ground truth", *names]):
        axes[0, c].set_title(n.replace("teacher:", "")[-18:], fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "dense probe masks on test lesions (white: hit, red: false positive, blue: missed)",
                 fontsize=8)
    return _save(fig, path, crop=True)  # the title is wider than a grid of one or two models


def _sam_plots(teacher: str, section: Mapping[str, Any], out: Path) -> Sequence[str]:
    """Per attribute, the prompted Dice of SAM's decoder on the teacher's and on the student's embedding, and their
    agreement, by group (the ``sam_prompts`` section of one SAM teacher)."""
    models = {("teacher encoder" if m.get("encoder") == "teacher" else f"student encoder ({n})"): m
              for n, m in (section.get("models") or {}).items()}
    models["agreement (student vs teacher masks)"] = section.get("agreement") or {}
    attrs: list = []
    for m in models.values():
        attrs += [a for a in (m.get("attributes") or {}) if a not in attrs]
    paths = []
    for attr in attrs:
        have = {n: m for n, m in models.items() if attr in (m.get("attributes") or {})}
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"sam_dice_{Path(teacher).name}_{attr}")
        paths.append(plot_group_dice(have, attr, out / f"{stem}.png",
                                     f"SAM decoder of {Path(teacher).name}: prompted Dice by {attr} (95% CI)"))
    return paths


def plot_report(report: Mapping[str, Any], out_dir: str | os.PathLike) -> Sequence[str]:
    """All figures a report dict allows: group AUC per model x attribute (x label), fidelity heatmap per
    attribute, the front. (Calibration curves need raw scores: call :func:`plot_calibration` directly.)"""
    out = Path(out_dir)
    paths = []
    for mname, m in report.get("models", {}).items():
        for attr, r in m.get("attributes", {}).items():
            per = r["labels"].items() if "labels" in r else [(None, r)]
            for lab, rr in per:
                stem = f"group_auc_{mname}_{attr}" + (f"_{lab}" if lab else "")
                stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
                paths.append(plot_group_auc(rr, out / f"{stem}.png", f"{mname}: {attr}" + (f" / {lab}" if lab else "")))
    for attr, per in (report.get("fidelity") or {}).items():
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"fidelity_{attr}")
        paths.append(plot_fidelity_heatmap(per, out / f"{stem}.png", f"fidelity by {attr}"))
    dense = (report.get("dense") or {}).get("models") or {}
    attrs: list = []
    for m in dense.values():
        attrs += [a for a in m.get("attributes", {}) if a not in attrs]
    for attr in attrs:
        have = {n: m for n, m in dense.items() if attr in m.get("attributes", {})}
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"dense_dice_{attr}")
        paths.append(plot_group_dice(have, attr, out / f"{stem}.png"))
    for name, t in ((report.get("sam_prompts") or {}).get("teachers") or {}).items():
        paths += _sam_plots(name, t, out)
    if report.get("pareto"):
        paths.append(plot_front(report["pareto"], out / "front.png"))
    if report.get("resolution"):
        paths.append(plot_resolution(report["resolution"], out / "resolution.png"))
    return paths
