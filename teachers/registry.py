"""Teacher families: `@register_family("name")` on a `Teacher` subclass makes cards with `family: name` buildable."""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Type, TypeVar

FAMILIES: Dict[str, type] = {}
# family modules shipped with the zoo; imported on first use so that `import teachers` stays light
BUILTIN_FAMILY_MODULES = ("teachers.families.oclip", "teachers.families.timm_vit", "teachers.families.sam",
                          "teachers.families.agglom_export", "teachers.families.hf")

T = TypeVar("T", bound=type)


def register_family(name: str) -> Callable[[T], T]:
    def deco(cls: T) -> T:
        if name in FAMILIES and FAMILIES[name] is not cls:
            raise ValueError(f"teacher family '{name}' is already registered by {FAMILIES[name].__name__}")
        cls.family = name  # type: ignore[attr-defined]
        FAMILIES[name] = cls
        return cls

    return deco


_loaded = False


def ensure_families() -> Dict[str, type]:
    global _loaded
    if not _loaded:
        for mod in BUILTIN_FAMILY_MODULES:
            importlib.import_module(mod)
        _loaded = True
    return FAMILIES


def get_family(name: str) -> Type:
    ensure_families()
    if name not in FAMILIES:
        raise KeyError(f"unknown teacher family '{name}'; valid families: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


__all__ = ["FAMILIES", "register_family", "ensure_families", "get_family"]
