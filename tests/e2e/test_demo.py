"""A reduced `make demo` through the real CLI, from outside the repository: every stage runs and writes what the
demo guide (docs/guide/demo.md) promises (teachers, caches, students per seed, reports with comparisons, exports, the verdict)."""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_reduced_demo_end_to_end(tmp_path):
    out, data = tmp_path / "runs", tmp_path / "data"
    cmd = [sys.executable, "-m", "agglom.demo", "quick=true", f"out={out}", f"data={data}", "num_workers=0",
           "image_size=32"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1200)  # not the repo root
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (data / "dataset.json").is_file()
    for t in ("ft-general", "ft-fair"):
        assert (out / "teachers" / t / "card.yaml").is_file()
        assert json.loads((out / "cache" / t / "manifest.json").read_text())["complete"]
    for s in (0, 1):
        for kind in ("erm", "fair"):
            rep = json.loads((out / f"student-{kind}-s{s}" / "eval" / "report.json").read_text())
            assert rep["fidelity"]["site"] and rep["fidelity_functional"]
            if kind == "fair":
                assert rep["comparison"]["reference"] == f"student-erm-s{s}"
        cfg = (out / f"student-fair-s{s}" / "config.yaml").read_text()
        assert "group_balance: 0.75" in cfg and "zscore_momentum: 0.0" in cfg  # the default fair candidate
        assert "group: excess" in cfg and f"student-erm-s{s}" in cfg  # held to the seed's ERM losses
    for kind in ("erm", "fair"):
        exp = out / f"student-{kind}-s0" / "export"
        assert (exp / "config.json").is_file() and (exp / "README.md").is_file()
    audit = json.loads((out / "student-erm-s0" / "eval" / "report.json").read_text())
    assert {"teacher:tiny-clip", "teacher:tiny-dinov2", "teacher:tiny-sam"} <= set(audit["models"])
    summary = (out / "summary.md").read_text()
    assert "| claim | holds | measured |" in summary and "fair − ERM" in summary and "timm.create_model" in summary
    verdict = json.loads((out / "summary.json").read_text())["verdict"]
    assert verdict["seeds"] == 2 and len(verdict["checks"]) >= 4 and all("holds" in c for c in verdict["checks"])
    # the fair recipe was chosen on validation, and the verdict says which student it reports
    sel = verdict["selection"]
    assert sel["split"] == "val" and sel["chosen"] in ("erm", "fair") and sel["candidates"][0]["name"] == "fair"
    assert "chosen on the validation split" in summary
    assert ("candidate_on_test" in verdict) == (sel["chosen"] == "erm")
    dense = verdict["dense"]  # per-group Dice of every student (over seeds) and teacher, and the Dice check
    assert {"erm", "fair", "teacher:tiny-sam", "teacher:ft-fair"} <= set(dense["models"]) and "holds" in dense["check"]
    assert dense["seeds"] == {"erm": 2, "fair": 2} and set(dense["groups"]) == {"A", "B"}
    assert "dense probe Dice per group" in summary and "The student as SAM's image encoder" in summary
    assert "sam_prompts" in audit and list((out / "student-erm-s0" / "eval").glob("sam_dice_*_site.png"))
    assert "agglom demo: done" in proc.stdout
    # a second run reuses everything it finished
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "reusing" in again.stdout
    # the ablation runner on the finished demo: two variants, their verdicts against ERM and the full recipe
    abl = [sys.executable, "-m", "agglom.ablation", f"out={out}", f"data={data}", "seeds=2", "steps=12",
           "variants=[no-ft-fair,balance-only,proxy-balance-only,proxy-balance-only:tiny-clip]", "attributes=[site,sex,age]", "bootstrap=30", "report_bootstrap=10",
           "image_size=32", "num_workers=0"]
    proc = subprocess.run(abl, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "ablation" / "summary.json").read_text())
    rows = res["by_attribute"]["site"]
    assert set(rows) == {"full", "no-ft-fair", "balance-only", "proxy-balance-only", "proxy-balance-only:tiny-clip"}
    assert res["variants"]["proxy-balance-only:tiny-clip"]["proxy_teacher"] == "tiny-clip"
    assert "proxy_groups-tiny-clip.json" in (out / "ablation" / "proxy-balance-only-tiny-clip-s0" / "config.yaml").read_text()
    assert set(res["by_attribute"]) == {"site", "sex", "age"}
    assert len(res["by_attribute"]["age"]["full"]["vs_erm"]["groups"]) >= 2  # age in groups, not one per year
    assert "reference" in rows["full"]["vs_erm"] and "variant" in rows["no-ft-fair"]["vs_erm"]
    proxy_cfg = (out / "ablation" / "proxy-balance-only-s0" / "config.yaml").read_text()
    assert "by: proxy" in proxy_cfg and "proxy_groups.json" in proxy_cfg
    assert "vs_full" in rows["no-ft-fair"] and "vs_full" not in rows["full"]
    assert "teachers/ft-fair" not in (out / "ablation" / "no-ft-fair-s0" / "config.yaml").read_text()
    assert "teachers/ft-general" in (out / "ablation" / "no-ft-fair-s0" / "config.yaml").read_text()
    assert "group: erm" in (out / "ablation" / "balance-only-s1" / "config.yaml").read_text()
    md = (out / "ablation" / "summary.md").read_text()
    assert "Δ worst-group AUC vs full recipe" in md and "Without ft-fair" in md and "| ERM |" in md


def test_another_fair_recipe_gets_its_own_student_folders():
    from agglom.demo import FAIR, fair_tag

    assert fair_tag(FAIR) == "fair"
    other = fair_tag(["data.group_balanced=true"])
    assert other.startswith("fair-") and other != fair_tag(["data.group_balance=0.5"])
    assert other == fair_tag(["data.group_balanced=true"])  # stable: a second run reuses its students


def test_at_erm_stands_for_the_seeds_erm_run(tmp_path):
    from agglom.demo import with_erm_run

    assert with_erm_run(["objective.reference=@erm", "objective.lam=1"], tmp_path / "student-erm-s2") == [
        f"objective.reference={tmp_path / 'student-erm-s2'}", "objective.lam=1"]


def test_a_finished_student_is_reused_only_with_the_settings_asked(tmp_path):
    from omegaconf import OmegaConf

    from agglom.demo import recipe_mismatch

    OmegaConf.save(OmegaConf.create({"data": {"group_balanced": True}, "objective": {"group": "excess", "lam": 1.0}}),
                   tmp_path / "config.yaml")
    assert recipe_mismatch(tmp_path, ["data.group_balanced=true", "objective.lam=1"]) == []
    bad = recipe_mismatch(tmp_path, ["objective.group=erm", "objective.lam=1", "heads.zscore_momentum=0"])
    assert bad == ["objective.group: saved 'excess', asked 'erm'", "heads.zscore_momentum: saved None, asked 0"]
