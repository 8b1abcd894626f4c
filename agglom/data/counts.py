"""What the readers did not use, or used changed: one record shared by the train and eval readers.

``skipped`` holds, per reason, the *distinct* samples (``shard:key``) or shards (their path) left out, so a bad
sample read again in a later epoch, by another worker or on another rank is still counted once, and a resumed run
counts exactly what an uninterrupted one does. ``noted`` counts, per reason, samples that were used but changed or
placed by a rule (values clamped into [0, 1], no group attribute: the ``unknown`` group); it counts reads.
``missing_samples`` (single-rank eval passes) is how many samples a split's datasheet lists that no reader saw.

Workers attach the counts found since their previous batch to each batch (``DATA_COUNTS``), so whatever was
consumed is counted even when training stops in the middle of an epoch; the :class:`~agglom.data.readers.Loader`
merges them before it yields the batch.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Set

DATA_COUNTS = "__agglom_counts__"
SHARD_REASONS = ("missing_shard", "empty_shard", "bad_tar")
SAMPLE_REASONS = ("duplicate_member", "duplicate_key", "missing_field", "bad_json", "bad_label", "bad_image",
                  "too_small", "bad_key")
SKIP_REASONS = SHARD_REASONS + SAMPLE_REASONS + ("missing_samples",)
NOTE_REASONS = ("clamped", "unknown_group", "no_label", "bad_mask")
_EXAMPLES = 3  # per reason, the first few (id: detail) kept for messages


class SkipCounts:
    """Skips by reason (distinct samples or shards), notes by reason, and a few examples of each.

    ``counts()`` / ``dict(self)`` give reason -> number; ``total`` is the number of samples and shards skipped.
    """

    def __init__(self) -> None:
        self.ids: Dict[str, Set[str]] = {}
        self.noted: Dict[str, int] = {}
        self.examples: Dict[str, Dict[str, str]] = {}  # reason -> {id: detail}, the first few
        self.missing_samples = 0

    # ---- recording (inside a worker)
    def skip(self, reason: str, ident: str, detail: Any = None) -> bool:
        """Record one skipped sample or shard; False when it was already recorded."""
        ids = self.ids.setdefault(reason, set())
        if ident in ids:
            return False
        ids.add(ident)
        ex = self.examples.setdefault(reason, {})
        if len(ex) < _EXAMPLES:
            ex[ident] = "" if detail is None else str(detail)[:200]
        return True

    def note(self, reason: str, n: int = 1) -> None:
        self.noted[reason] = self.noted.get(reason, 0) + int(n)

    # ---- merging
    def add(self, other: Any) -> "SkipCounts":
        """Merge another record (or its :meth:`to_json` form) into this one."""
        if other is None:
            return self
        if not isinstance(other, SkipCounts):
            other = SkipCounts.from_json(other)
        for reason, ids in other.ids.items():
            self.ids.setdefault(reason, set()).update(ids)
        for reason, n in other.noted.items():
            self.note(reason, n)
        for reason, ex in other.examples.items():
            mine = self.examples.setdefault(reason, {})
            for ident, detail in ex.items():
                if len(mine) < _EXAMPLES and ident not in mine:
                    mine[ident] = detail
        self.missing_samples += other.missing_samples
        return self

    def counts(self) -> Dict[str, int]:
        out = {r: len(self.ids[r]) for r in SKIP_REASONS if self.ids.get(r)}
        out.update({r: len(v) for r, v in self.ids.items() if v and r not in out})
        if self.missing_samples:
            out["missing_samples"] = self.missing_samples
        return out

    def keys(self):  # noqa: D401 - dict-like view: dict(counts) gives reason -> number
        return self.counts().keys()

    def __getitem__(self, reason: str) -> int:
        return self.counts()[reason]

    def get(self, reason: str, default: Optional[int] = None) -> Optional[int]:
        return self.counts().get(reason, default)

    def __bool__(self) -> bool:
        return bool(self.counts()) or bool(self.noted)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self.counts() == dict(other)
        return isinstance(other, SkipCounts) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"SkipCounts({self.counts()}, noted={self.noted})"

    @property
    def total(self) -> int:
        return sum(self.counts().values())

    @property
    def sample_skips(self) -> int:
        """Samples left out (shard-level reasons and ``missing_samples`` excluded)."""
        return sum(len(self.ids.get(r, ())) for r in SAMPLE_REASONS)

    def summary(self) -> Dict[str, Any]:
        """The reporting form: ``{"skipped": {reason: n}, "noted": {...}, "examples": {...}}``."""
        out: Dict[str, Any] = {"skipped": self.counts(), "noted": dict(self.noted)}
        if self.examples:
            out["examples"] = {k: [f"{i}: {d}" if d else i for i, d in v.items()] for k, v in self.examples.items() if v}
        return out

    def describe(self) -> str:
        """One line for logs and reports: ``bad_image 7 (e.g. train-000001.tar:s12: npy: ...); clamped 3``."""
        parts = []
        for reason, n in self.counts().items():
            ex = next(iter((self.examples.get(reason) or {}).items()), None)
            parts.append(f"{reason} {n}" + (f" (e.g. {ex[0]}: {ex[1]})" if ex else ""))
        parts += [f"{reason} {n} (used)" for reason, n in self.noted.items()]
        return "; ".join(parts) if parts else "none"

    # ---- serialising (checkpoint state, batches from workers)
    def to_json(self) -> Dict[str, Any]:
        return {"ids": {k: sorted(v) for k, v in self.ids.items() if v}, "noted": dict(self.noted),
                "examples": {k: dict(v) for k, v in self.examples.items() if v},
                "missing_samples": self.missing_samples}

    @classmethod
    def from_json(cls, d: Optional[Mapping[str, Any]]) -> "SkipCounts":
        out = cls()
        if not d:
            return out
        if "ids" not in d and "noted" not in d:  # an older run.json/state.json: reason -> number only
            for reason, n in d.items():
                out.ids[reason] = {f"(count) {i}" for i in range(int(n))}
            return out
        out.ids = {k: set(v) for k, v in (d.get("ids") or {}).items()}
        out.noted = {k: int(v) for k, v in (d.get("noted") or {}).items()}
        out.examples = {k: dict(v) for k, v in (d.get("examples") or {}).items() if isinstance(v, Mapping)}
        out.missing_samples = int(d.get("missing_samples") or 0)
        return out

    def take(self) -> Optional[Dict[str, Any]]:
        """The record as JSON, then cleared (a worker's counts since its previous batch); None when empty."""
        if not (self.ids or self.noted or self.missing_samples):
            return None
        out = self.to_json()
        self.ids, self.noted, self.examples, self.missing_samples = {}, {}, {}, 0
        return out


__all__ = ["SkipCounts", "DATA_COUNTS", "SKIP_REASONS", "SHARD_REASONS", "SAMPLE_REASONS", "NOTE_REASONS"]
