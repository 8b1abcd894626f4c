"""`make lint`'s size check (tools/size_check.py): it finds a long function and a long file, holds the known
items to their recorded size, and the checkout passes it."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("size_check", ROOT / "tools" / "size_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finds_long_functions_and_files_and_holds_the_baseline(tmp_path):
    sc = _tool()
    body = "\n".join(f"    x{i} = {i}" for i in range(sc.MAX_FUNC))  # def line + MAX_FUNC lines: one too many
    (tmp_path / "long.py").write_text(f"def long():\n{body}\n\n\ndef short():\n    return 1\n")
    (tmp_path / "big.py").write_text("x = 1\n" * (sc.MAX_FILE + 1))
    found = sc.check([str(tmp_path)])
    assert found == {f"{tmp_path / 'long.py'}::long": sc.MAX_FUNC + 1, str(tmp_path / "big.py"): sc.MAX_FILE + 1}
    assert len(sc.problems(found, {})) == 2
    assert sc.problems(found, dict(found)) == []  # known, not grown
    grown = sc.problems(found, {k: v - 1 for k, v in found.items()})
    assert len(grown) == 2 and all("grew" in p for p in grown)
    assert sc.problems({}, {"gone.py": 500}) == ["gone.py: fits now; remove it from size_baseline.txt"]


def test_the_checkout_passes(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert _tool().main([]) == 0
