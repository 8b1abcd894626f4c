"""Validate proxy groups (clusters) against true attributes where they exist: sizes, NMI and ARI.

A good match means the clusters recover *that* attribute; proxy parity is still not demographic parity
(docs/metrics.md: CXR clusters recover sex but not age, Queiroz et al.).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Sequence

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

MISSING = (None, "", "unknown")


def _is_missing(v, missing: Iterable) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    if isinstance(v, np.floating) and np.isnan(v):
        return True
    try:
        return v in missing
    except TypeError:
        return False


@dataclass
class AttrScore:
    attr: str
    n: int  # samples with a value for this attribute
    n_missing: int
    n_values: int  # distinct values among them
    nmi: float  # NaN when fewer than 1 sample has the attribute
    ari: float


@dataclass
class ClusterReport:
    n: int
    sizes: Dict[int, int]
    scores: List[AttrScore] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"n": self.n, "num_clusters": len(self.sizes), "sizes": {str(k): v for k, v in self.sizes.items()},
                "attributes": {s.attr: {"n": s.n, "n_missing": s.n_missing, "n_values": s.n_values,
                                        "nmi": s.nmi, "ari": s.ari} for s in self.scores}}

    def to_markdown(self) -> str:
        sizes = np.array(list(self.sizes.values())) if self.sizes else np.zeros(1, dtype=int)
        lines = [f"clusters: {len(self.sizes)} over {self.n} samples "
                 f"(size min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()})", ""]
        if self.scores:
            lines += ["| attribute | n | missing | values | NMI | ARI |", "|---|---|---|---|---|---|"]
            for s in self.scores:
                lines.append(f"| {s.attr} | {s.n} | {s.n_missing} | {s.n_values} | {_fmt(s.nmi)} | {_fmt(s.ari)} |")
            lines.append("")
        lines += ["| cluster | size |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in self.sizes.items()]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()


def _fmt(x: float) -> str:
    return "undefined" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def cluster_report(assignments: Sequence[int], true_attrs: Mapping[str, Sequence] | None = None,
                   missing: Iterable = MISSING) -> ClusterReport:
    """Cluster sizes plus NMI/ARI (scikit-learn defaults: NMI with arithmetic averaging) of the clustering
    against each true attribute, over the samples that have a value (None, NaN, "" and "unknown" count as
    missing). An attribute no sample has gets NaN ("undefined")."""
    a = np.asarray(assignments)
    if a.ndim != 1:
        raise ValueError(f"assignments must be 1-D, got shape {a.shape}")
    uniq, counts = np.unique(a, return_counts=True)
    sizes = {(u.item() if hasattr(u, "item") else u): int(c) for u, c in zip(uniq, counts)}
    report = ClusterReport(n=int(a.shape[0]), sizes=sizes)
    missing = tuple(missing)
    for name, values in (true_attrs or {}).items():
        values = list(values)
        if len(values) != a.shape[0]:
            raise ValueError(f"attribute {name!r}: {len(values)} values for {a.shape[0]} samples")
        keep = np.array([not _is_missing(v, missing) for v in values], dtype=bool)
        y = [str(v) for v, k in zip(values, keep) if k]
        if y:
            nmi = float(normalized_mutual_info_score(y, a[keep]))
            ari = float(adjusted_rand_score(y, a[keep]))
        else:
            nmi = ari = float("nan")
        report.scores.append(AttrScore(str(name), int(keep.sum()), int((~keep).sum()), len(set(y)), nmi, ari))
    return report


def render_report(report: ClusterReport) -> str:
    """Plain-text/markdown rendering (same as ``report.to_markdown()``)."""
    return report.to_markdown()
