"""`make lint`'s import contract: no import circles among the modules of agglom/ and teachers/, and teachers/ never
imports agglom/ (the zoo stands alone: agglom uses it, not the other way).

Every import counts, a function-level one too: a circle broken only by importing late is still two modules that
cannot be understood (or moved) one without the other. Usage: ``python tools/import_check.py [ROOT]``; exit 1 with
one line per circle or forbidden import.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, List, Set

PACKAGES = ("agglom", "teachers")
FORBIDDEN = {"teachers": ("agglom",)}  # package -> packages it must never import
# agglom's floors, lowest first (docs/ARCHITECTURE.md): a module may import from its own floor and the ones below
LAYERS = (
    ("teachers",),
    ("agglom.errors", "agglom.dist", "agglom.registry", "agglom.phases", "agglom.runlock", "agglom.metrics"),
    ("agglom.config",),
    ("agglom.data",),
    ("agglom.cache", "agglom.objective"),
    ("agglom.model",),
    ("agglom.engine", "agglom.train"),
    ("agglom.runs",),
    ("agglom.distill",),
    ("agglom.eval", "agglom.curate", "agglom.finetune", "agglom.export", "agglom.monitor"),
    ("agglom.commands", "agglom.cli", "agglom.demo", "agglom.__main__", "agglom"),
)
BASELINE = Path(__file__).with_name("layer_baseline.txt")  # imports up the floors not yet removed: none may be added


def modules(root: Path) -> Dict[str, Path]:
    """Dotted module name -> file, for every module of :data:`PACKAGES` under ``root``."""
    out = {}
    for pkg in PACKAGES:
        for p in sorted((root / pkg).rglob("*.py")):
            parts = list(p.relative_to(root).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _known(name: str, mods: Dict[str, Path]) -> str:
    """The longest prefix of ``name`` that is one of our modules ('' when none is)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name


def imports(mods: Dict[str, Path]) -> Dict[str, Set[str]]:
    """Module -> the modules of ours it imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    edges: Dict[str, Set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        package = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] or [base]
            for t in targets:
                hit = _known(t, mods)
                if hit and hit != m:
                    edges[m].add(hit)
    return edges


def circles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges) + 100))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def floor(module: str) -> int:
    """The floor of ``module`` in :data:`LAYERS` (its package's; the top floor for anything unlisted)."""
    parts = module.split(".")
    for name in (".".join(parts[:2]), parts[0]):
        for i, names in enumerate(LAYERS):
            if name in names:
                return i
    return len(LAYERS) - 1


def upward(edges: Dict[str, Set[str]]) -> List[str]:
    """``a -> b`` for every import of a module on a higher floor."""
    return [f"{a} -> {b}" for a, targets in sorted(edges.items()) for b in sorted(targets) if floor(b) > floor(a)]


def problems(root: Path, baseline: Set[str] = frozenset()) -> List[str]:
    """One line per import circle, per forbidden import and per import up the floors not in ``baseline``."""
    mods = modules(root)
    edges = imports(mods)
    out = [f"import circle: {' <-> '.join(group)}" for group in circles(edges)]
    for m, targets in sorted(edges.items()):
        banned = FORBIDDEN.get(m.split(".")[0], ())
        out += [f"{m} imports {t}: {m.split('.')[0]}/ never imports {t.split('.')[0]}/" for t in sorted(targets)
                if t.split(".")[0] in banned]
    up = [e for e in upward(edges) if e.split(" -> ")[1].split(".")[0] not in FORBIDDEN.get(e.split(".")[0], ())]
    out += [f"import up the floors: {e} (docs/ARCHITECTURE.md)" for e in up if e not in baseline]
    out += [f"{e}: gone; remove it from {BASELINE.name}" for e in sorted(baseline - set(up))]
    return out


def read_baseline(path: Path = BASELINE) -> Set[str]:
    return {ln.split("#")[0].strip() for ln in path.read_text().splitlines() if ln.split("#")[0].strip()} \
        if path.is_file() else set()


def main(argv: List[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1]
    known = read_baseline()
    found = problems(root, known)
    for line in found:
        print(line)
    print(f"import check: {'ok' if not found else f'{len(found)} problems'} ({len(modules(root))} modules: no circles, "
          f"teachers/ never imports agglom/, imports go down the floors except the {len(known)} in {BASELINE.name})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
