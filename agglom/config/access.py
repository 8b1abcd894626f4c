"""One way to read a key of any config node: a resolved DictConfig section, a dataclass (``GroupSpec``), a plain
mapping (a group spec written as a dict), or nothing at all (a section the caller's config lacks)."""
from __future__ import annotations

from typing import Any


def cfg_get(node: Any, key: str, default: Any = None) -> Any:
    """``node[key]`` / ``node.key``; ``default`` when ``node`` is None, lacks the key, holds None there, or cannot
    give it (an omegaconf missing value)."""
    if node is None:
        return default
    try:
        v = node.get(key, default) if hasattr(node, "get") else getattr(node, key, default)
    except Exception:  # noqa: BLE001 - omegaconf's missing-value and unknown-key errors: treated as absent
        return default
    return default if v is None else v


__all__ = ["cfg_get"]
