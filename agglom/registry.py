"""One registry for agglom's plugin points (heads, normalisers, group objectives, engines): name -> object.

The same rules everywhere:

- ``add(name, obj)`` (or ``@registry.register(name)`` on a class) adds a name; registering a name again with
  the *same* object is a no-op (a module imported twice), with a *different* object a :class:`DuplicateNameError`
  naming both — a plugin never replaces a built-in silently;
- ``lookup(name)`` of an unknown name is a ``ConfigError`` (exit 2) naming the config key and the choices
  (``get`` stays the mapping's: None when absent);
- the registry reads like a mapping (``name in HEADS``, ``HEADS[name]``, ``sorted(HEADS)``), so
  :mod:`agglom.config.choices` lists the live names in ``--help`` and in the load-time check.

Stdlib only (the engine registry holds ``"module:Class"`` strings and is read before torch loads). The teacher
zoo cannot import agglom, so ``teachers/registry.py`` holds the same class for the teacher families;
``tests/registry/test_registries.py`` holds every registry to these rules.
"""
from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, Mapping, Optional, TypeVar

T = TypeVar("T")


class DuplicateNameError(ValueError):
    """A name registered twice with different objects (a programming error, raised at import time)."""


def _describe(obj: object) -> str:
    return f"{obj.__module__}.{obj.__qualname__}" if hasattr(obj, "__qualname__") else repr(obj)


class Registry(Mapping[str, T], Generic[T]):
    """Names of one ``kind`` (``"head"``, ...) -> objects; ``key``: the config key that chooses one (for errors)."""

    def __init__(self, kind: str, key: str = "", builtins: Optional[Dict[str, T]] = None) -> None:
        self.kind, self.key = kind, key
        self._items: Dict[str, T] = {}
        for name, obj in (builtins or {}).items():
            self.add(name, obj)

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` as ``name`` and return it (the one duplicate-name rule, above)."""
        old = self._items.get(name)
        if old is not None and old is not obj and old != obj:
            raise DuplicateNameError(f"{self.kind} {name!r} is already registered ({_describe(old)}); "
                                     f"refusing {_describe(obj)}: register it under another name")
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``@REGISTRY.register("name")`` is ``REGISTRY.add("name", cls)``."""
        return lambda obj: self.add(name, obj)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a plugin for one case)."""
        self._items.pop(name, None)

    def unknown(self, name: str) -> str:
        """The message for a name that is not registered: the key, the kind and the choices."""
        where = f"{self.key}: " if self.key else ""
        return f"{where}unknown {self.kind} {name!r}; choose one of {', '.join(sorted(self._items))}"

    def lookup(self, name: str) -> T:
        """The object registered as ``name``; an unknown name is a ConfigError (exit 2)."""
        if name not in self._items:
            from agglom.errors import ConfigError

            raise ConfigError(self.unknown(name))
        return self._items[name]

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(sorted(self._items))})"


__all__ = ["Registry", "DuplicateNameError"]
