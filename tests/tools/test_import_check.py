"""`make lint`'s import contract (tools/import_check.py): it finds a circle, a late (function-level) import that
closes one, and teachers/ importing agglom/; the checkout passes it."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("import_check", ROOT / "tools" / "import_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path, files: dict) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_finds_circles_late_imports_and_forbidden_directions(tmp_path):
    ic = _tool()
    root = _tree(tmp_path, {
        "agglom/__init__.py": "", "agglom/a.py": "from agglom.b import x\n",
        "agglom/b.py": "def f():\n    from . import a\n", "agglom/c.py": "import agglom.a\n",
        "teachers/__init__.py": "", "teachers/z.py": "def g():\n    from agglom.c import y\n",
    })
    found = ic.problems(root)
    assert "import circle: agglom.a <-> agglom.b" in found
    assert any(p.startswith("teachers.z imports agglom.c") for p in found)
    assert len(found) == 2  # c imports a one way: no circle


def test_imports_up_the_floors_are_found_and_held_to_the_baseline(tmp_path):
    ic = _tool()
    root = _tree(tmp_path, {"agglom/__init__.py": "", "agglom/data/__init__.py": "", "agglom/eval/__init__.py": "",
                            "agglom/data/x.py": "def f():\n    from agglom.eval import y\n", "agglom/eval/y.py": ""})
    up = "agglom.data.x -> agglom.eval.y"
    assert ic.problems(root) == [f"import up the floors: {up} (docs/ARCHITECTURE.md)"]
    assert ic.problems(root, {up}) == []  # known debt
    assert ic.problems(root, {up, "agglom.a -> agglom.b"}) == [f"agglom.a -> agglom.b: gone; remove it from {ic.BASELINE.name}"]


def test_the_checkout_has_no_circles_and_teachers_stands_alone():
    ic = _tool()
    assert ic.problems(ROOT, ic.read_baseline()) == []
