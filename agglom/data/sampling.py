"""Group-weighted sampling of the training stream: per-group sample counts and acceptance probabilities.

With ``data.group_balance`` (or ``data.group_balanced``) and/or ``data.group_weights`` the training stream of
:mod:`agglom.data.readers` keeps each parsed sample of group ``g`` with probability ``acceptance[g]``
(weight × count^(−β), scaled so the largest is 1), so group g's share of the draws goes as weight × n_g^(1−β):
β = 0 is the natural distribution, β = 1 (``group_balanced``) draws every group equally often, and values in
between balance partially — the data-side utility ↔ parity knob. This module computes those probabilities once per loader, before any worker starts; the
stream itself only draws against them. :mod:`agglom.data.readers` re-exports both functions.

Counts come from the datasheet when the grouping is a plain attribute that no sidecar overrides, else from
one pass over the split's json members (images are not read).
"""
from __future__ import annotations

import math
from typing import Any, List, Mapping, Optional

from agglom.data.groups import GroupIndexer, _AttrSpec
from agglom.data.limits import sample_json, unsafe_key

__all__ = ["group_counts", "acceptance"]


def group_counts(cfg: Any, indexer: GroupIndexer, split: str, datasheet: Optional[Mapping[str, Any]],
                 sidecars: Mapping[str, Mapping[str, Any]]) -> List[int]:
    """Samples per group in a split: from the datasheet for a plain attribute, else by reading the json."""
    spec = indexer.spec
    if isinstance(spec, _AttrSpec) and datasheet and not any(spec.attr in r for r in sidecars.values()):
        info = (datasheet.get("attributes") or {}).get(spec.attr) or {}
        counts = (info.get("counts") or {}).get(split)
        total = ((datasheet.get("splits") or {}).get(split) or {}).get("samples")
        if counts is not None and total is not None:
            out = [int(counts.get(v, 0)) for v in spec.values]
            return out + [int(total) - sum(out)]
    from agglom.data.counts import SkipCounts
    from agglom.data.shards import read_shard, shard_urls

    out = [0] * indexer.num_groups
    counts = SkipCounts()  # the training stream itself counts what is skipped; here only groups are tallied
    for sample in (s for u in shard_urls(cfg, split) for s in read_shard(u, counts, lambda f: f.endswith(".json"))):
        try:
            meta = sample_json(sample["json"])  # size and depth bounded (agglom.data.limits)
            attrs = dict(meta.get("attrs") or {})
        except (KeyError, ValueError, AttributeError, TypeError):
            continue
        if unsafe_key(sample["__key__"]) is not None:  # the stream skips it (bad_key): not drawn, not counted
            continue
        attrs.update(sidecars.get(sample["__key__"], {}))
        out[indexer.index(attrs)] += 1
    return out


def acceptance(cfg: Any, indexer: GroupIndexer, datasheet: Optional[Mapping[str, Any]],
               sidecars: Mapping[str, Mapping[str, Any]]) -> Optional[List[float]]:
    """Per-group acceptance probabilities for the training stream (None = take every sample)."""
    from agglom.config.load import ConfigError

    data = cfg.data
    weights_cfg = dict(data.group_weights or {})
    beta = 1.0 if data.group_balanced else float(data.get("group_balance", 0.0) or 0.0)
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"data.group_balance must be in [0, 1] (0 = natural, 1 = balanced), got {beta}")
    if beta == 0.0 and not weights_cfg:
        return None
    bad = [g for g in weights_cfg if g not in indexer.names]
    if bad:
        raise ConfigError(f"data.group_weights: unknown group(s) {bad}; groups of {indexer.by!r} are {indexer.names}")
    if any(float(w) < 0 for w in weights_cfg.values()):
        raise ConfigError("data.group_weights must be >= 0")
    counts = None
    if beta > 0:  # over every split the stream reads (data.distill_splits too)
        from agglom.data.shards import training_splits

        per_split = [group_counts(cfg, indexer, split, datasheet, sidecars) for split in training_splits(cfg)]
        counts = [sum(c) for c in zip(*per_split)]
    w = []
    for i, name in enumerate(indexer.names):
        wi = float(weights_cfg.get(name, 1.0))
        if counts is not None:  # a group's share of the draws goes as weight x count^(1 - beta)
            wi = wi * float(counts[i]) ** -beta if counts[i] > 0 else 0.0
        w.append(wi)
    top = max(w)
    if top <= 0 or not math.isfinite(top):
        raise ConfigError(f"data.group_weights/group_balanced leave no group to sample (weights {w})")
    return [x / top for x in w]
