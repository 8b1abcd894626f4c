"""Groups from sample attributes: a declared spec (attribute, numeric bins, intersection) or a plain attribute.

Every indexer ends with an explicit ``"unknown"`` group (always the last index): a sample that lacks the
attribute, carries a value outside the known set, or falls outside the bins lands there, never silently in
another group.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

from agglom.config.access import cfg_get

UNKNOWN = "unknown"
NO_GROUPS = "none"  # groups.by=none: every sample in one group
ALL = "all"


def fmt_value(v: Any) -> str:
    """The canonical string of an attribute value (what group names and the datasheet use)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isfinite(v) and v.is_integer():
            return str(int(v))
        return repr(v)
    return str(v)


def _fmt_edge(e: float) -> str:
    return fmt_value(float(e))


def bin_names(bins: Sequence[float]) -> List[str]:
    edges = [float(b) for b in bins]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:])):
        raise ValueError(f"bins must be at least two strictly increasing edges, got {list(bins)}")
    return [f"[{_fmt_edge(a)},{_fmt_edge(b)})" for a, b in zip(edges[:-1], edges[1:])]


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v == "")


class _Spec:
    """One resolved spec: ``values`` (ordered names, without unknown) and ``value(attrs) -> name | None``."""

    def __init__(self, name: str, values: List[str]):
        self.name = name
        self.values = values
        self._pos = {v: i for i, v in enumerate(values)}

    def value(self, attrs: Mapping[str, Any]) -> Optional[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def index(self, attrs: Mapping[str, Any]) -> int:
        v = self.value(attrs)
        return self._pos.get(v, len(self.values)) if v is not None else len(self.values)


class _AllSpec(_Spec):
    """``groups.by=none``: one group, ``all`` (label-free distillation on data without attributes)."""

    def value(self, attrs: Mapping[str, Any]) -> Optional[str]:
        return ALL


class _AttrSpec(_Spec):
    def __init__(self, name: str, attr: str, values: List[str]):
        super().__init__(name, values)
        self.attr = attr

    def value(self, attrs: Mapping[str, Any]) -> Optional[str]:
        v = attrs.get(self.attr) if attrs else None
        if _is_missing(v):
            return None
        s = fmt_value(v)
        return s if s in self._pos else None


class _BinSpec(_Spec):
    def __init__(self, name: str, attr: str, bins: Sequence[float]):
        super().__init__(name, bin_names(bins))
        self.attr = attr
        self.edges = [float(b) for b in bins]

    def value(self, attrs: Mapping[str, Any]) -> Optional[str]:
        v = attrs.get(self.attr) if attrs else None
        if _is_missing(v) or isinstance(v, bool):
            return None
        try:
            x = float(v)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(x):
            return None
        for i, (a, b) in enumerate(zip(self.edges[:-1], self.edges[1:])):
            if a <= x < b:
                return self.values[i]
        return None


class _CrossSpec(_Spec):
    def __init__(self, name: str, parts: List[_Spec]):
        values = ["|".join(t) for t in itertools.product(*[p.values for p in parts])]
        super().__init__(name, values)
        self.parts = parts

    def value(self, attrs: Mapping[str, Any]) -> Optional[str]:
        vals = [p.value(attrs) for p in self.parts]
        if any(v is None for v in vals):
            return None
        return "|".join(vals)  # type: ignore[arg-type]


def datasheet_values(datasheet: Optional[Mapping[str, Any]], attr: str) -> Optional[List[str]]:
    """Sorted known values of an attribute from a datasheet's ``attributes`` section (None if unknown)."""
    if not datasheet:
        return None
    info = (datasheet.get("attributes") or {}).get(attr)
    if not info:
        return None
    values = info.get("values")
    if not values:
        return None
    if info.get("type") == "numeric":
        return [fmt_value(v) for v in sorted(float(x) for x in values)]
    return sorted(fmt_value(v) for v in values)


class GroupIndexer:
    """Map a sample's attrs to a group index for the spec (or plain attribute) named ``by``.

    ``.names`` lists group names with ``"unknown"`` last; ``.index(attrs)``; ``.num_groups``;
    ``.unknown_index``; ``.values_of(spec_name, attrs)`` gives the value string of any spec/attribute.
    """

    def __init__(self, specs: Sequence[Any] = (), by: str = "site", datasheet: Optional[Mapping[str, Any]] = None):
        self.datasheet = datasheet
        self._decl: Dict[str, Any] = {}
        for s in specs or []:
            name = cfg_get(s, "name") or cfg_get(s, "attr") or "|".join(cfg_get(s, "attrs") or [])
            if not name:
                raise ValueError("a group spec needs a name, an attr or attrs")
            self._decl[str(name)] = s
        self._cache: Dict[str, _Spec] = {}
        self.by = by
        self.spec = self._resolve(by)
        self.names: List[str] = list(self.spec.values) + [UNKNOWN]
        self.num_groups = len(self.names)
        self.unknown_index = self.num_groups - 1

    # ---------------------------------------------------------------- resolution
    def _resolve(self, name: str, _stack: tuple = ()) -> _Spec:
        if name in self._cache:
            return self._cache[name]
        if name in _stack:
            raise ValueError(f"group spec {name!r} refers to itself")
        decl = self._decl.get(name)
        if decl is None and name == NO_GROUPS:
            spec: _Spec = _AllSpec(name, [ALL])
        elif decl is None:
            spec = _AttrSpec(name, name, self._values_for(name, None))
        else:
            attr = cfg_get(decl, "attr")
            attrs = list(cfg_get(decl, "attrs") or [])
            bins = list(cfg_get(decl, "bins") or [])
            values = [str(v) for v in (cfg_get(decl, "values") or [])]
            if attrs:
                if attr or bins:
                    raise ValueError(f"group spec {name!r}: give either attr (with optional bins) or attrs, not both")
                parts = [self._resolve(a, _stack + (name,)) for a in attrs]
                spec = _CrossSpec(name, parts)
                if values:
                    spec = _restrict(spec, values)
            else:
                attr = attr or name
                if bins:
                    spec = _BinSpec(name, attr, bins)
                else:
                    spec = _AttrSpec(name, attr, values or self._values_for(attr, name))
        self._cache[name] = spec
        return spec

    def _values_for(self, attr: str, spec_name: Optional[str]) -> List[str]:
        values = datasheet_values(self.datasheet, attr)
        if values is None:
            import difflib

            what = f"group spec {spec_name!r}" if spec_name else f"attribute {attr!r}"
            hint = "set groups.specs[].values" if spec_name else f"declare a spec for {attr!r} with values (or bins)"
            known = sorted((self.datasheet or {}).get("attributes") or {}) + sorted(self._decl)
            close = difflib.get_close_matches(attr, known, n=3, cutoff=0.5)
            also = (f"; did you mean {', '.join(close)}?" if close else "") + \
                (f" (attributes and specs: {', '.join(known)})" if known else "")
            raise ValueError(f"{what}: no known values for attribute {attr!r} (not in dataset.json attributes, "
                             f"or numeric with many values); {hint}{also}; groups.by=none trains without groups")
        return values

    # ---------------------------------------------------------------- lookups
    def index(self, attrs: Optional[Mapping[str, Any]]) -> int:
        return self.spec.index(attrs or {})

    def name_of(self, attrs: Optional[Mapping[str, Any]]) -> str:
        return self.names[self.index(attrs)]

    def values_of(self, spec_name: str, attrs: Optional[Mapping[str, Any]]) -> str:
        v = self._resolve(spec_name).value(attrs or {})
        return UNKNOWN if v is None else v

    def names_of(self, spec_name: str) -> List[str]:
        return list(self._resolve(spec_name).values) + [UNKNOWN]

    def __repr__(self) -> str:
        return f"GroupIndexer(by={self.by!r}, names={self.names})"


class _Restricted(_Spec):
    def __init__(self, inner: _Spec, values: List[str]):
        super().__init__(inner.name, values)
        self.inner = inner

    def value(self, attrs: Mapping[str, Any]) -> Optional[str]:
        v = self.inner.value(attrs)
        return v if v in self._pos else None


def _restrict(spec: _Spec, values: List[str]) -> _Spec:
    return _Restricted(spec, values)


def group_names(name: str, specs: Sequence[Any] = (), datasheet: Optional[Mapping[str, Any]] = None) -> List[str]:
    """Group names (``"unknown"`` last) for any spec or plain attribute — for evaluation reports."""
    return GroupIndexer(specs, by=name, datasheet=datasheet).names


def group_labels(name: str, attrs_list: Sequence[Mapping[str, Any]], specs: Sequence[Any] = (),
                 datasheet: Optional[Mapping[str, Any]] = None) -> List[int]:
    """Group index of each sample's attrs under spec/attribute ``name``."""
    gi = GroupIndexer(specs, by=name, datasheet=datasheet)
    return [gi.index(a) for a in attrs_list]


__all__ = ["GroupIndexer", "UNKNOWN", "fmt_value", "bin_names", "group_names", "group_labels", "datasheet_values"]


def parse_value(v: str) -> Any:
    """A CSV cell as int, else float, else the stripped string (so numeric attributes can be binned)."""
    v = v.strip()
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v
