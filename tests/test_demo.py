"""A reduced `make demo` through the real CLI: every stage runs and writes what the README promises."""
import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_reduced_demo_end_to_end(tmp_path):
    repo = Path(__file__).parents[1]
    out, data = tmp_path / "runs", tmp_path / "data"
    cmd = [sys.executable, "-m", "agglom.demo", "quick=true", f"out={out}", f"data={data}", "num_workers=0",
           "image_size=32"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (data / "dataset.json").is_file()
    for t in ("ft-erm", "ft-groupdro"):
        assert (out / "teachers" / t / "card.yaml").is_file()
    for s in ("student-erm", "student-gap"):
        rep = json.loads((out / s / "eval" / "report.json").read_text())
        assert rep["fidelity"]["site"]
        assert (out / s / "export" / "config.json").is_file() and (out / s / "export" / "README.md").is_file()
    audit = json.loads((out / "student-erm" / "eval" / "report.json").read_text())
    assert {"teacher:tiny-clip", "teacher:tiny-dinov2", "teacher:tiny-sam"} <= set(audit["models"])
    summary = (out / "summary.md").read_text()
    assert "worst-group AUC" in summary and "Per-group fidelity" in summary and "timm.create_model" in summary
    assert "agglom demo: done" in proc.stdout
