"""Teacher families: `@register_family("name")` on a `Teacher` subclass makes cards with `family: name` buildable.

:class:`Registry` is the zoo's copy of ``agglom.registry.Registry`` (the zoo never imports agglom): the same
duplicate-name rule (the same object again is a no-op, a different one under a taken name raises
:class:`DuplicateNameError` naming both) and the same unknown-name message (here a ``KeyError``: a card's family is
checked by :func:`teachers.card_loader.load_card` first). ``tests/registry/test_registries.py`` holds both copies to
one rule.
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Generic, Iterator, Mapping, Type, TypeVar

T = TypeVar("T")


class DuplicateNameError(ValueError):
    """A name registered twice with different objects (a programming error, raised at import time)."""


def _describe(obj: object) -> str:
    return f"{obj.__module__}.{obj.__qualname__}" if hasattr(obj, "__qualname__") else repr(obj)


class Registry(Mapping[str, T], Generic[T]):
    """Names of one ``kind`` -> objects; ``key``: the card field that chooses one (for errors)."""

    def __init__(self, kind: str, key: str = "") -> None:
        self.kind, self.key = kind, key
        self._items: Dict[str, T] = {}

    def add(self, name: str, obj: T) -> T:
        old = self._items.get(name)
        if old is not None and old is not obj and old != obj:
            raise DuplicateNameError(f"{self.kind} {name!r} is already registered ({_describe(old)}); "
                                     f"refusing {_describe(obj)}: register it under another name")
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        return lambda obj: self.add(name, obj)

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def unknown(self, name: str) -> str:
        where = f"{self.key}: " if self.key else ""
        return f"{where}unknown {self.kind} {name!r}; choose one of {', '.join(sorted(self._items))}"

    def lookup(self, name: str) -> T:
        if name not in self._items:
            raise KeyError(self.unknown(name))
        return self._items[name]

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(sorted(self._items))})"


FAMILIES: Registry[type] = Registry("teacher family", key="family")
# family modules shipped with the zoo; imported on first use so that `import teachers` stays light
BUILTIN_FAMILY_MODULES = ("teachers.families.oclip", "teachers.families.timm_vit", "teachers.families.sam",
                          "teachers.families.agglom_export", "teachers.families.hf")

C = TypeVar("C", bound=type)


def register_family(name: str) -> Callable[[C], C]:
    """Class decorator: the :class:`teachers.base.Teacher` subclass builds cards with ``family: <name>``."""
    def deco(cls: C) -> C:
        FAMILIES.add(name, cls)
        cls.family = name  # type: ignore[attr-defined]
        return cls

    return deco


_loaded = False


def ensure_families() -> Registry[type]:
    global _loaded
    if not _loaded:
        for mod in BUILTIN_FAMILY_MODULES:
            importlib.import_module(mod)
        _loaded = True
    return FAMILIES


def get_family(name: str) -> Type:
    ensure_families()
    return FAMILIES.lookup(name)


__all__ = ["FAMILIES", "Registry", "DuplicateNameError", "register_family", "ensure_families", "get_family"]
