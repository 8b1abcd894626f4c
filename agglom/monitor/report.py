"""`agglom monitor`'s report: ``report.json`` (schema ``agglom.monitor/1``), ``report.md`` for people, and
``monitor.png``, the time series over the batches (drift p-values per group against their threshold, group shares,
and per-group AUC with intervals where labels arrived)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from agglom.eval.figure import _save, plt


def _f(v: Optional[float], spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def _group_rows(b: Mapping[str, Any]) -> List[str]:
    rows = ["| group | n ref | n batch | MMD² | drift p | KS | score p | AUC ref | AUC batch | Δ AUC [95% CI] | ECE ref "
            "| ECE batch | Δ ECE [95% CI] |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    score, auc = b["score"] or {}, b["auc"] or {}
    flagged = {f["group"] for f in b["findings"] if f["kind"] in ("drift", "score", "auc")}
    for g, d in b["drift"].items():
        s, a = score.get(g, {}), auc.get(g, {})
        e = a.get("ece") or {}
        name = f"**{g}**" if g in flagged else g
        rows.append(f"| {name} | {d['n_reference']} | {d['n_batch']} | {_f(d.get('mmd2'), '.3g')} | "
                    f"{_f(d.get('p'), '.3g')} | {_f(s.get('ks'))} | {_f(s.get('p'), '.3g')} | "
                    f"{_f(a.get('reference'))} | {_f(a.get('batch'))} | {_f(a.get('delta'), '+.3f')}{_ci(a)} | "
                    f"{_f(e.get('reference'))} | {_f(e.get('batch'))} | {_f(e.get('delta'), '+.3f')}{_ci(e)} |")
    return rows


def _ci(r: Mapping[str, Any]) -> str:
    return f" [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]" if r.get("ci") else ""


def _proportion_rows(b: Mapping[str, Any]) -> List[str]:
    rows = []
    for attr, r in b["proportions"].items():
        shares = ", ".join(f"{g} {r['reference'][g]:.2f}→{r['batch'][g]:.2f}" for g in r["batch"])
        note = " (some expected counts under 5: read p with care)" if r["small_expected"] else ""
        rows.append(f"- {attr}: {shares}; χ² p = {_f(r['p'], '.3g')}{note}")
    prev = b.get("prevalence")
    if prev:
        rows.append(f"- label prevalence: {prev['reference_prevalence']:.3f}→{prev['batch_prevalence']:.3f}; "
                    f"χ² p = {_f(prev['p'], '.3g')}")
    return rows


def markdown(report: Mapping[str, Any]) -> str:
    """report.md: the alarm first, then each batch's table and proportions."""
    ref, o = report["reference"], report["options"]
    alarms = [(b["batch"], f["text"]) for b in report["batches"] for f in b["findings"] if f["alarm"]]
    lines = [f"# Monitoring `{report['model']}`", "",
             f"Reference: `{ref['path']}` split `{ref['split']}` ({ref['n']} samples; embedding `{report['embedding']}` "
             f"projected on its first {ref['pca_dims']} principal components; probe: "
             f"{'logistic regression on its labels, out-of-fold scores' if ref['probe'] else 'none (no usable labels)'}).",
             "", f"Tests: MMD² (RBF kernel, median-heuristic bandwidth) with {o['permutations']} permutations; KS on "
             f"the probe's scores; χ² on group counts; AUC and the calibration error (ECE, range10 binning, of the probe's "
             f"probabilities) with {o['bootstrap']} bootstrap resamples. Each batch's "
             f"drift and score tests are held to alpha = {o['alpha']:g} over their number (Bonferroni); groups under "
             f"{o['min_group']} samples are not tested; an AUC alarms when it falls by more than {o['auc_drop']:g} "
             f"with its interval below 0. Alarms on: {', '.join(o['alarm_on']) or 'nothing'}.", ""]
    if alarms:
        lines += ["**ALARM**:", "", *[f"- **{batch}**: {text}" for batch, text in alarms], ""]
    else:
        lines += ["No alarm: no batch drifted or degraded beyond the thresholds.", ""]
    for b in report["batches"]:
        notices = [f["text"] for f in b["findings"] if not f["alarm"]]
        lines += [f"## Batch `{b['batch']}`", "", f"{b['n']} samples, {b['labelled']} with labels.", "",
                  *_group_rows(b), "", "Group proportions (reference → batch):", "", *_proportion_rows(b), ""]
        lines += [f"Noted (not alarmed on): {'; '.join(notices)}.", ""] if notices else []
    lines += ["![time series](monitor.png)", ""]
    return "\n".join(lines)


def _series(report: Mapping[str, Any], section: str, field: str) -> Dict[str, List[Optional[float]]]:
    """group -> per-batch values of ``section[group][field]`` (None where not tested)."""
    out: Dict[str, List[Optional[float]]] = {}
    batches = report["batches"]
    for i, b in enumerate(batches):
        for g, r in (b[section] or {}).items():
            out.setdefault(g, [None] * len(batches))[i] = r.get(field)
    return out


def plot(report: Mapping[str, Any], path: Path) -> str:
    """monitor.png: drift p-values (log scale, the per-batch threshold dashed), group shares, AUC per group."""
    names = [b["batch"] for b in report["batches"]]
    x = list(range(len(names)))
    has_auc = any(b["auc"] for b in report["batches"])
    fig, axes = plt.subplots(1, 3 if has_auc else 2, figsize=(5.2 * (3 if has_auc else 2), 3.8))
    ax = axes[0]
    for g, ps in _series(report, "drift", "p").items():
        ax.plot(x, [p if p is not None else float("nan") for p in ps], marker="o", label=g,
                linewidth=2.2 if g == "overall" else 1.2)
    thresholds = [report["options"]["alpha"] / max(1, sum(r.get("p") is not None for r in b["drift"].values()))
                  for b in report["batches"]]
    ax.step(x, thresholds, where="mid", color="k", linestyle="--", label="threshold")
    ax.set_yscale("log")
    ax.set_title("embedding drift (MMD p-value)")
    ax = axes[1]
    for b_attr in report["reference"]["attributes"]:
        groups = sorted({g for b in report["batches"] for g in b["proportions"][b_attr]["batch"]})
        for g in groups:
            ax.plot(x, [b["proportions"][b_attr]["batch"].get(g, 0.0) for b in report["batches"]], marker="o",
                    label=f"{b_attr}={g}")
    ax.set_title("group shares per batch")
    if has_auc:
        ax = axes[2]
        for g, deltas in _series(report, "auc", "batch").items():
            ax.plot(x, [v if v is not None else float("nan") for v in deltas], marker="o", label=g)
        ax.set_title("AUC per group (labelled samples)")
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.legend(fontsize=6, loc="best")
    return _save(fig, path)


def write_report(out: Path, report: Mapping[str, Any]) -> Path:
    """report.json, report.md and monitor.png into ``out``."""
    from agglom.data.manifest import write_failure

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=1, default=_plain))
        (out / "report.md").write_text(markdown(report))
        plot(report, out / "monitor.png")
    except OSError as e:
        raise write_failure(e, out, "the monitoring report was not written") from None
    return out


def _plain(v: Any) -> Any:
    """numpy scalars and arrays in report.json as plain numbers and lists."""
    return v.tolist() if hasattr(v, "tolist") else str(v)


__all__ = ["write_report", "markdown", "plot"]
