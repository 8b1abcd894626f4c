"""Size check for `make lint`: no file over MAX_FILE lines and no function over MAX_FUNC lines in the library.

A file counts its physical lines; a function (or method) counts from its ``def`` line (decorators excluded) to its
last line, nested functions included. Uses only the standard library (``ast``), so it runs before anything is
installed. Exit 0 when everything fits; exit 1 listing each file and function over its limit.

``tools/size_baseline.txt`` lists what was over the limits when the check was introduced (``path`` or
``path::function`` and its size then): those may not grow, and an entry that fits now must be removed, so the
list only shrinks. Anything new over a limit fails.

    python tools/size_check.py [DIR ...]          (default: agglom teachers benchmarks)
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, Iterable, List

MAX_FILE = 400
MAX_FUNC = 60
BASELINE = Path(__file__).with_name("size_baseline.txt")


def oversized(path: Path) -> Dict[str, int]:
    """``{"path": lines}`` when the file is too long, ``{"path::function": lines}`` per function too long."""
    text = path.read_text(encoding="utf-8")
    out: Dict[str, int] = {}
    n = len(text.splitlines())
    if n > MAX_FILE:
        out[str(path)] = n
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNC:
                out[f"{path}::{node.name}"] = max(length, out.get(f"{path}::{node.name}", 0))
    return out


def check(dirs: Iterable[str]) -> Dict[str, int]:
    found: Dict[str, int] = {}
    for d in dirs:
        for path in sorted(Path(d).rglob("*.py")):
            found.update(oversized(path))
    return found


def read_baseline(path: Path = BASELINE) -> Dict[str, int]:
    if not path.is_file():
        return {}
    rows = [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {name: int(size) for name, size in rows}


def problems(found: Dict[str, int], baseline: Dict[str, int]) -> List[str]:
    """New or grown oversized items, and baseline entries that now fit (to be removed)."""
    out = []
    for name, size in sorted(found.items()):
        limit = MAX_FUNC if "::" in name else MAX_FILE
        if name not in baseline:
            out.append(f"{name}: {size} lines (max {limit})")
        elif size > baseline[name]:
            out.append(f"{name}: {size} lines, grew from {baseline[name]} (max {limit}; split it)")
    for name in sorted(set(baseline) - set(found)):
        out.append(f"{name}: fits now; remove it from {BASELINE.name}")
    return out


def main(argv: List[str]) -> int:
    found = check(argv or ["agglom", "teachers", "benchmarks"])
    bad = problems(found, read_baseline() if not argv else {})
    for p in bad:
        print(p)
    if bad:
        print(f"size check: files <= {MAX_FILE} lines, functions <= {MAX_FUNC} lines ({len(bad)} problems)")
    else:
        print(f"size check: ok ({len(found)} known items over the limits, listed in {BASELINE.name})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
