"""The body of `agglom curate`: embed, deduplicate, cluster into proxy groups, score against true attributes,
write the sidecar and the report (see :mod:`agglom.config.curate_args` for the arguments).

Embeds every sample of the chosen split(s) once, optionally drops near-duplicates, clusters into proxy groups,
writes a sidecar (``agglom.sidecar/1``, keyed by sample key) that ``data.sidecars=[<path>]`` turns into
``attrs[<attr>]``, and a report (``curate_report.json`` + ``.md`` beside the sidecar) with cluster sizes, NMI/ARI
against each true attribute, and the removed duplicate keys.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

from agglom.config.choices import input_channels

METHODS = ("kmeans", "per_class", "hierarchical")
DEDUP_SPACES = ("raw", "center", "zscore")


# --------------------------------------------------------------------------- helpers
def progress_mode(value: Any) -> str:
    """auto | on | off; YAML reads a bare on/off as a boolean, so True/False map back."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _loader_cfg(a: Any, run_cfg: Any = None, datasheet: Optional[Dict[str, Any]] = None) -> Any:
    """A recipe-shaped config for the data layer's eval reader."""
    from omegaconf import OmegaConf

    from agglom.config.schema import Recipe

    cfg = OmegaConf.structured(Recipe)
    if run_cfg is not None:
        cfg.data.image_size = int(run_cfg.data.image_size)
        cfg.data.grayscale = str(run_cfg.data.grayscale)
        cfg.data.interpolation = str(run_cfg.data.interpolation)
        cfg.student.mean = list(run_cfg.student.mean)
        cfg.student.std = list(run_cfg.student.std)
    else:
        cfg.student.mean = [float(v) for v in a.mean]
        cfg.student.std = [float(v) for v in a.std]
    if a.image_size is not None:
        cfg.data.image_size = int(a.image_size)
    if a.grayscale is not None:
        cfg.data.grayscale = str(a.grayscale)
    cfg.data.root = str(a.root)
    cfg.data.shards = a.shards
    cfg.data.batch_size = int(a.batch_size)
    cfg.data.num_workers = int(a.num_workers)
    cfg.data.sidecars = []
    # the reader computes a group per sample: point it at an attribute the datasheet knows
    attrs = (datasheet or {}).get("attributes") or {}
    known = [name for name, info in attrs.items() if isinstance(info, dict) and info.get("values")]
    if known and cfg.groups.by not in known:
        cfg.groups.by = known[0]
    elif not known:  # no attributes to group by: one declared placeholder group (every sample is "unknown")
        from agglom.config.schema import GroupSpec

        cfg.groups.specs = [GroupSpec(name="_curate", attr="_curate", values=["-"])]
        cfg.groups.by = "_curate"
    return cfg


def _numeric_many(values: List[Any], max_values: int = 10) -> bool:
    xs = [v for v in values if v not in (None, "", "unknown")]
    return (bool(xs) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs)
            and len(set(xs)) > max_values)


def _quantile_bins(values: List[Any], q: int = 5) -> List[Any]:
    import numpy as np

    xs = np.array([float(v) for v in values if v not in (None, "", "unknown")])
    edges = np.unique(np.quantile(xs, np.linspace(0, 1, q + 1)))
    out: List[Any] = []
    for v in values:
        if v in (None, "", "unknown"):
            out.append(None)
            continue
        i = int(np.clip(np.searchsorted(edges, float(v), side="right") - 1, 0, len(edges) - 2))
        out.append(f"[{edges[i]:g},{edges[i + 1]:g}{']' if i == len(edges) - 2 else ')'}")
    return out


def _true_attrs(emb: Any, wanted: List[str], proxy_attr: str) -> Dict[str, List[Any]]:
    """attribute -> per-sample values (numeric ones with many values in quintile bins), plus the label."""
    names: List[str] = []
    for a in emb.attrs:
        for k in a:
            if k not in names and k != proxy_attr:
                names.append(k)
    if wanted:
        missing = [w for w in wanted if w not in names and w != "label"]
        if missing:
            from agglom.config.load import ConfigError

            raise ConfigError(f"validate: attribute(s) {missing} not found in the samples; present: {names}")
        names = [w for w in wanted if w != "label"]
    out: Dict[str, List[Any]] = {}
    for n in names:
        vals = [a.get(n) for a in emb.attrs]
        if _numeric_many(vals):
            out[f"{n} (quintiles)"] = _quantile_bins(vals)
        else:
            out[n] = vals
    if (not wanted or "label" in wanted) and any(v != -1 for v in emb.labels):  # -1: read label-free
        out["label"] = [str(v) for v in emb.labels]
    return out


def _contingency(assign: List[str], values: List[Any]) -> Dict[str, Dict[str, int]]:
    table: Dict[str, Counter] = {}
    for c, v in zip(assign, values):
        table.setdefault(c, Counter())["unknown" if v in (None, "") else str(v)] += 1
    return {c: dict(sorted(cnt.items())) for c, cnt in sorted(table.items(), key=lambda t: _cluster_order(t[0]))}


def _cluster_order(name: str) -> tuple:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (int(digits) if digits else 0, name)


def _rename_by_size(labels: Any, prefix: str = "c") -> List[str]:
    """Cluster ids -> "c0", "c1", ... with c0 the largest cluster (ties by first appearance)."""
    counts = Counter(int(v) for v in labels)
    first: Dict[int, int] = {}
    for i, v in enumerate(labels):
        first.setdefault(int(v), i)
    order = sorted(counts, key=lambda c: (-counts[c], first[c]))
    name = {c: f"{prefix}{i}" for i, c in enumerate(order)}
    return [name[int(v)] for v in labels]


def _cluster(a: Any, X: Any, labels: List[Any]) -> tuple:
    """(per-sample group names, method details for the report)."""
    import numpy as np

    from agglom.curate import hierarchical_kmeans, kmeans, per_class_kmeans

    common = dict(normalize=bool(a.normalize), whiten=bool(a.whiten), pca_dim=a.pca_dim)
    if a.method == "kmeans":
        cl = kmeans(X, int(a.k), seed=int(a.seed), n_init=int(a.n_init), **common)
        return _rename_by_size(cl.labels), {"inertia": cl.inertia, "k": cl.k}
    if a.method == "per_class":
        ys = [str(v) for v in labels]
        cl = per_class_kmeans(X, ys, k=int(a.k), seed=int(a.seed), n_init=int(a.n_init), **common)
        # names carry the class: "y<class>c<j>", j by size within the class
        names = [""] * len(ys)
        for cls in sorted(set(ys)):
            idx = [i for i, y in enumerate(ys) if y == cls]
            local = _rename_by_size([int(cl.labels[i]) for i in idx], prefix=f"y{cls}c")
            for i, n in zip(idx, local):
                names[i] = n
        return names, {"k_per_class": {str(k): v for k, v in cl.k_per_class.items()}}
    levels = [int(v) for v in a.levels] or [min(len(X), 10 * int(a.k)), int(a.k)]
    tree = hierarchical_kmeans(X, levels, n_resample=int(a.n_resample), seed=int(a.seed),
                               sample_size=int(a.sample_size), **common)
    top = tree.assignments[-1]
    return _rename_by_size(top), {"levels": levels,
                                  "level_sizes": [np.sort(tree.sizes(lv))[::-1].tolist()
                                                  for lv in range(tree.n_levels)]}


def _render(report: Dict[str, Any]) -> str:
    import math

    def f(x: Any) -> str:
        return "undefined" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

    enc = report["encoder"]
    who = f"teacher {enc['teacher']}" if "teacher" in enc else f"run {enc.get('run')}"
    lines = [f"# agglom curate: {report['attr']}", "",
             f"{report['n_clustered']} samples clustered ({report['n_embedded']} embedded from "
             f"{', '.join(report['splits'])}); encoder: {who} ({enc['features']} features, {report['dim']}-d); "
             f"method {report['method']}", ""]
    lines += ["| group | size |", "|---|---|"] + [f"| {c} | {n} |" for c, n in report["sizes"].items()] + [""]
    if report["validation"]:
        lines += ["| attribute | n | missing | values | NMI | ARI |", "|---|---|---|---|---|---|"]
        for name, s in report["validation"].items():
            lines.append(f"| {name} | {s['n']} | {s['n_missing']} | {s['n_values']} | {f(s['nmi'])} | {f(s['ari'])} |")
        lines.append("")
        best = report.get("best_match")
        if best:
            lines.append(f"best match: `{best['attr']}` (ARI {f(best['ari'])}, NMI {f(best['nmi'])}). "
                         "Proxy parity is not demographic parity: a cluster that matches one attribute says "
                         "nothing about the others.")
            lines.append("")
        for name, table in report["contingency"].items():
            vals = sorted({v for row in table.values() for v in row})
            lines += [f"`{name}` by group:", "", "| group | " + " | ".join(vals) + " |",
                      "|---" * (len(vals) + 1) + "|"]
            lines += [f"| {c} | " + " | ".join(str(row.get(v, 0)) for v in vals) + " |" for c, row in table.items()]
            lines.append("")
    d = report["dedup"]
    if d["threshold"] > 0:
        lines.append(f"near-duplicates (cosine >= {d['threshold']} on {d['space']} features): {len(d['removed'])} removed from clustering, "
                     f"{d['pairs']} pairs; removed samples take the group of the sample they duplicate")
        if d["removed"]:
            shown = d["removed"][:50]
            lines.append("removed: " + ", ".join(f"`{k}`" for k in shown)
                         + (f" ... (+{len(d['removed']) - 50})" if len(d["removed"]) > 50 else ""))
    else:
        lines.append("near-duplicates: not checked (dedup_threshold=0)")
    lines += ["", f"sidecar: `{report['sidecar']}` (use it with `data.sidecars=[{report['sidecar']}]`, "
                  f"`groups.by={report['attr']}`)",
              f"time: embed {report['seconds']['embed']:.1f} s, cluster {report['seconds']['cluster']:.1f} s"]
    return "\n".join(lines) + "\n"


def dedup_features(X: Any, space: str) -> Any:
    """Features for the near-duplicate cosine. Raw network features share a large common component (cosine
    ~0.999 between any two images for the tiny random teachers), so by default they are centred and scaled per
    dimension first (``zscore``); then only true near-copies come close to 1."""
    import numpy as np

    X = np.asarray(X, dtype=np.float32)
    if space == "raw":
        return X
    Z = X - X.mean(0, keepdims=True)
    if space == "zscore":
        Z = Z / (X.std(0, keepdims=True) + 1e-6)
    return Z


# --------------------------------------------------------------------------- the command
def check_args(a: Any) -> None:
    """Refuse bad arguments before anything is read (ConfigError: exit 2, naming the key)."""
    from agglom.config.load import ConfigError
    from agglom.curate.embed import FEATURE_KINDS

    if bool(a.teacher) == bool(a.run):
        raise ConfigError("curate: give exactly one encoder: teacher=<card name|path> or run=<agglom run dir>")
    if a.method not in METHODS:
        raise ConfigError(f"method: {a.method!r} is not one of {', '.join(METHODS)}")
    if a.features not in FEATURE_KINDS:
        raise ConfigError(f"features: {a.features!r} is not one of {', '.join(FEATURE_KINDS)}")
    if int(a.k) < 1:
        raise ConfigError(f"k must be >= 1, got {a.k}")
    if not 0.0 <= float(a.dedup_threshold) <= 1.0:
        raise ConfigError(f"dedup_threshold must be in [0, 1] (0 = off), got {a.dedup_threshold}")
    if a.dedup_space not in DEDUP_SPACES:
        raise ConfigError(f"dedup_space must be one of {', '.join(DEDUP_SPACES)}, got {a.dedup_space!r}")
    a.progress = progress_mode(a.progress)
    if a.progress not in ("auto", "on", "off"):
        raise ConfigError(f"progress must be auto|on|off, got {a.progress!r}")


def resolve_splits(a: Any, probe: Any, sheet_path: Path, datasheet: Dict[str, Any]) -> tuple:
    """(splits to curate, expected samples per split) from the arguments and the datasheet."""
    from agglom.config.load import ConfigError

    if not datasheet and not a.shards:
        raise ConfigError(f"root: no dataset.json under {sheet_path.parent} (write one with `agglom data synth|pack`, "
                          "or give shards= for web-style shards without one)")
    splits = list(a.splits)
    if a.shards and "{split}" not in a.shards:  # one pattern, one split: what it names is the training split
        splits = [probe.data.train_split]
        print(f"agglom curate: shards={a.shards} has no {{split}}: curating it as split {splits[0]!r}", flush=True)
    if a.method == "per_class" and not (datasheet.get("label") or {}):
        raise ConfigError("method=per_class clusters within each class, so it needs labels, and this dataset "
                          "declares none; use method=kmeans or method=hierarchical")
    if datasheet.get("splits"):
        present = [s for s in splits if s in datasheet["splits"] and datasheet["splits"][s].get("samples", 0) > 0]
        if not present:
            raise ConfigError(f"splits: none of {splits} has samples in {sheet_path} "
                              f"(it has {sorted(datasheet['splits'])})")
        splits = present
    totals = {s: int(datasheet["splits"][s]["samples"]) for s in splits} if datasheet.get("splits") else {}
    return splits, totals


def encoder_of(a: Any, datasheet: Dict[str, Any], device: Any) -> tuple:
    """(encoder fn, encoder info, loader config): a trained run's student, or a teacher card."""
    from agglom.config.load import ConfigError
    from agglom.curate.embed import run_encoder, teacher_encoder

    if a.run:
        enc, info, run_cfg = run_encoder(a.run, a.features, device)
        return enc, info, _loader_cfg(a, run_cfg, datasheet)
    cfg = _loader_cfg(a, None, datasheet)
    c = input_channels(cfg.data.grayscale)
    try:
        enc, info = teacher_encoder(a.teacher, list(cfg.student.mean)[:c], list(cfg.student.std)[:c], a.features,
                                    device)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise ConfigError(f"teacher: cannot build {a.teacher!r}: {e}") from e
    return enc, info, cfg


def dedup_and_cluster(a: Any, emb: Any) -> Dict[str, Any]:
    """Drop near-duplicates (all but the first of each set) from clustering, cluster the rest; a removed row takes
    the group of the kept row it duplicates (following chains)."""
    import numpy as np

    from agglom.curate import near_duplicates

    keep = np.ones(len(emb), dtype=bool)
    removed: List[str] = []
    dup_of: Dict[int, int] = {}
    n_pairs = 0
    if float(a.dedup_threshold) > 0:
        dups = near_duplicates(dedup_features(emb.X, a.dedup_space), list(range(len(emb))),
                               threshold=float(a.dedup_threshold))
        keep[dups.remove_index] = False
        removed = [emb.keys[int(i)] for i in dups.remove_index]
        n_pairs = len(dups.pairs)
        for i, j, _ in dups.pairs:
            if keep[i] and not keep[j] and j not in dup_of:
                dup_of[j] = i
    kept_idx = np.flatnonzero(keep)
    work = emb.subset(kept_idx)
    names_kept, details = _cluster(a, work.X, work.labels)
    group: Dict[int, str] = {int(i): n for i, n in zip(kept_idx, names_kept)}
    for j in np.flatnonzero(~keep):
        i = dup_of.get(int(j))
        while i is not None and i not in group:  # a chain: follow to a kept row
            i = dup_of.get(i)
        if i is not None:
            group[int(j)] = group[i]
    return {"keep": keep, "removed": removed, "n_pairs": n_pairs, "work": work, "names": names_kept,
            "details": details, "group": group}


def validation_of(a: Any, work: Any, names_kept: List[str]) -> tuple:
    """NMI/ARI of the proxy groups against each true attribute, on the clustered samples; (scores, best, truth)."""
    import numpy as np

    from agglom.curate import cluster_report

    truth = _true_attrs(work, list(a.validate), a.attr)
    rep = cluster_report(names_kept, truth)
    validation = {s.attr: {"n": s.n, "n_missing": s.n_missing, "n_values": s.n_values,
                           "nmi": None if np.isnan(s.nmi) else s.nmi, "ari": None if np.isnan(s.ari) else s.ari}
                  for s in rep.scores}
    scored = [(n, v) for n, v in validation.items() if v["ari"] is not None and n != "label"]
    return validation, max(scored, key=lambda t: t[1]["ari"]) if scored else None, truth


def build_report(a: Any, emb: Any, c: Dict[str, Any], ctx: Dict[str, Any]) -> Dict[str, Any]:
    """curate_report.json's content."""
    validation, best, truth = validation_of(a, c["work"], c["names"])
    group, splits = c["group"], ctx["splits"]
    return {
        "schema": "agglom.curate_report/1", "attr": a.attr, "sidecar": str(ctx["out"]), "root": str(ctx["root"]),
        "splits": splits, "encoder": ctx["info"], "method": a.method, "params": {
            "k": int(a.k), "levels": list(a.levels), "n_resample": int(a.n_resample), "seed": int(a.seed),
            "normalize": bool(a.normalize), "whiten": bool(a.whiten), "pca_dim": a.pca_dim, **c["details"]},
        "dim": int(emb.X.shape[1]), "n_embedded": len(emb), "n_clustered": int(c["keep"].sum()),
        "n_assigned": len(group), "sizes": dict(sorted(Counter(c["names"]).items(), key=lambda t: (-t[1], t[0]))),
        "sizes_by_split": {s: dict(Counter(group[i] for i in group if emb.splits[i] == s)) for s in splits},
        "validation": validation,
        "best_match": {"attr": best[0], **best[1]} if best else None,
        "contingency": {n: _contingency(c["names"], v) for n, v in truth.items() if len(set(map(str, v))) <= 12},
        "dedup": {"threshold": float(a.dedup_threshold), "space": a.dedup_space, "removed": c["removed"],
                  "pairs": c["n_pairs"]},
        "seconds": ctx["seconds"],
    }


def run_curate(a: Any) -> Dict[str, Any]:
    """Embed -> deduplicate -> cluster -> sidecar + report (json + markdown beside the sidecar)."""
    from agglom.config.load import ConfigError
    from agglom.curate.embed import embed_splits, pick_device
    from agglom.curate.sidecar import check_targets, write_json_atomic, write_sidecar, write_text_atomic
    from agglom.data.shards import data_home, shard_pattern
    from agglom.data.writer import read_datasheet

    check_args(a)
    probe = _loader_cfg(a)
    root = data_home(probe)  # data.root, or with shards= the folder the shards belong to (never a stray root)
    datasheet = read_datasheet(root) or {}  # a broken dataset.json: one line naming it
    splits, totals = resolve_splits(a, probe, root / "dataset.json", datasheet)
    out = Path(a.out) if a.out else root / f"{a.attr}_groups.json"
    check_targets(out)
    device = pick_device(a.device)
    t0 = time.perf_counter()
    enc, info, cfg = encoder_of(a, datasheet, device)
    emb = embed_splits(cfg, splits, enc, device, progress=a.progress, totals=totals)
    t_embed = time.perf_counter() - t0
    if len(emb) == 0:
        where = shard_pattern(probe, splits[0]) or f"{root}/<split>/*.tar"
        raise ConfigError(f"no usable samples in {where} (splits {splits})")
    t1 = time.perf_counter()
    c = dedup_and_cluster(a, emb)
    seconds = {"embed": round(t_embed, 3), "cluster": round(time.perf_counter() - t1, 3)}
    meta = {"method": a.method, "k": int(a.k), "seed": int(a.seed), "splits": splits, "encoder": info,
            "root": str(root.resolve()), "dedup_threshold": float(a.dedup_threshold), **c["details"]}
    write_sidecar(out, a.attr, {emb.keys[i]: g for i, g in sorted(c["group"].items())}, meta)
    report = build_report(a, emb, c, {"splits": splits, "out": out, "root": root, "info": info, "seconds": seconds})
    write_json_atomic(out.parent / "curate_report.json", report)
    report["markdown"] = write_text_atomic(out.parent / "curate_report.md", _render(report)).read_text()
    return report
