"""`python -m benchmarks.deploy quick=true` (issue 45's targets at toy size: every row is there), the training
energy record of run.json (RAPL where readable, an estimate otherwise) and the model card's use of it, and the
monitor's per-group calibration against the reference."""
import json

import numpy as np
import pytest

from agglom.cli import main as cli
from agglom.export.cost import card_rows, training_cost
from agglom.monitor.stats import auc_delta
from agglom.train import energy
from agglom.train.energy import EnergyMeter, energy_record, rapl_domains


# ------------------------------------------------------------------ the benchmark, quick
@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from benchmarks.deploy import main

    out = tmp_path_factory.mktemp("deploy") / "bench"
    assert main([f"out={out}", "quick=true"]) == 0
    return out, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_quick_benchmark_has_every_row(quick):
    out, s = quick
    rows = s["rows"]
    by = {}
    for r in rows:
        by.setdefault(r["section"], []).append(r)
    onnx = by["onnx"]
    assert len(onnx) == 3 and all(r["met"] and r["value"] <= 1e-4 for r in onnx), onnx
    assert {r["metric"] for r in onnx} == {f"max |ONNX - PyTorch| fp32 at {n} px" for n in (16, 32, 64)}
    lat = by["latency"]
    assert len(lat) == 6 and all(r["value"] > 0 for r in lat)
    assert [r["met"] for r in lat if "int8" in r["metric"]] != [] and all(
        r["ratio"] > 0 for r in lat if r["baseline"])
    int8 = by["int8"]
    assert any(r["metric"].startswith("Δ AUC overall") for r in int8)
    assert any("site=B" in r["metric"] for r in int8) and all("[" in r["metric"] for r in int8[:-1])
    mon = by["monitor"]
    kinds = {r["metric"].split(":")[0] for r in mon}
    assert kinds == {"new acquisition site", "prevalence change", "blur and contrast change", "i.i.d. (false alarms)"}
    assert len(mon) == 8 and all(0 <= r["value"] <= 1 for r in mon)
    assert all("batches alarm (family-wise alpha 0.01)" in r["metric"] for r in mon if r["met"] is not None)
    cost = by["cost"]
    assert len(cost) == 2 and all(r["value"] > 0 for r in cost)
    e = by["energy"]
    assert len(e) == 2 and e[0]["value"] > 0 and e[0]["unit"] == "kWh"
    kinds = s["details"]["monitor"]["kinds"]
    assert kinds["newsite"]["new_group_named"] == kinds["newsite"]["batches"]  # site C is named as new
    assert (out / "monitor-example.png").stat().st_size > 1000


@pytest.mark.slow
def test_quick_benchmark_records_energy_and_calibration(quick):
    out, s = quick
    run_json = json.loads((out / "runs" / "student" / "run.json").read_text())
    rec = run_json["energy"]
    assert rec["schema"] == "agglom.energy/1" and rec["method"] in ("rapl", "estimate")
    assert rec["kwh"] == pytest.approx(rec["joules"] / 3.6e6) and rec["gco2e"] == pytest.approx(rec["kwh"] * 475)
    card = (out / "runs" / "student" / "export" / "README.md").read_text()
    assert "Training:" in card and f"{rec['kwh']:.3g} kWh" in card
    report = json.loads((out / "monitor" / "report.json").read_text())
    overall = report["batches"][0]["auc"]["overall"]
    assert overall["ece"]["binning"] == "range10" and overall["ece"]["at_size"] == overall["n_batch"]
    assert "Δ ECE [95% CI]" in (out / "monitor" / "report.md").read_text()


def test_options_quick_caps_and_explicit_keys_win():
    from benchmarks.deploy import options

    o = options(["quick=true", "batches=3"])
    assert o["steps"] == 4 and o["batches"] == 3 and o["size_list"] == [16, 32, 64]
    with pytest.raises(SystemExit, match="unknown option"):
        options(["nope=1"])


# ------------------------------------------------------------------ energy: the meter and the record
def _powercap(root, values, wrap=2**32):
    for i, v in enumerate(values):
        d = root / f"intel-rapl:{i}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "energy_uj").write_text(f"{v}\n")
        (d / "max_energy_range_uj").write_text(f"{wrap}\n")
        sub = d / f"intel-rapl:{i}:0"  # a sub-domain (core): inside the package's count, never added
        sub.mkdir(exist_ok=True)
        (sub / "energy_uj").write_text("123\n")
    return root


def test_rapl_meter_adds_packages_skips_subdomains_and_corrects_a_wrap(tmp_path):
    root = _powercap(tmp_path / "powercap", [1_000_000, 5_000_000], wrap=10_000_000)
    assert [d.name for d in rapl_domains(root)] == ["intel-rapl:0", "intel-rapl:1"]
    m = EnergyMeter(root)
    assert m.available and not m.why
    _powercap(root, [3_000_000, 1_000_000], wrap=10_000_000)  # package 1 wrapped: 5e6 -> 1e7 -> 1e6
    assert m.lap() == pytest.approx(2.0 + 6.0)
    assert m.lap() == pytest.approx(0.0)


def test_no_readable_counter_means_an_estimate_that_says_why(tmp_path):
    m = EnergyMeter(tmp_path / "absent")
    assert not m.available and "does not exist" in m.why and m.lap() is None
    rec = energy_record({"train_seconds": 36.0, "device": "cpu", "world_size": 1}, m.why)
    assert rec["method"] == "estimate" and not rec["measured"] and rec["joules"] == pytest.approx(36 * 65)
    assert rec["kwh"] == pytest.approx(36 * 65 / 3.6e6) and rec["unmetered_because"] == m.why
    gpu = energy_record({"train_seconds": 10.0, "device": "cuda", "world_size": 2, "rapl_j": 50.0,
                         "rapl_seconds": 10.0})
    assert gpu["method"] == "rapl + estimate" and gpu["joules"] == pytest.approx(50 + 10 * 2 * 300)
    assert not EnergyMeter(tmp_path, enabled=False, why_not="a run over 2 processes").available


def test_training_records_rapl_energy_in_run_json_and_the_card_says_measured(tmp_path, monkeypatch, synth_root,
                                                                             make_tiny_args):
    root = _powercap(tmp_path / "powercap", [0])
    counter = {"uj": 0}

    def ticking(path):  # the package counter advances 2 J each time it is read
        if path.name == "energy_uj" and path.parent.name == "intel-rapl:0":
            counter["uj"] += 2_000_000
            return counter["uj"]
        return 2**40

    monkeypatch.setattr(energy, "RAPL_ROOT", root)
    monkeypatch.setattr(energy, "_read_int", ticking)
    assert cli(["train", *make_tiny_args(tmp_path / "runs", synth_root, "e", 4)]) == 0
    run = tmp_path / "runs" / "e"
    rec = json.loads((run / "run.json").read_text())["energy"]
    assert rec["method"] == "rapl" and rec["measured"] and rec["parts"][0]["method"] == "rapl"
    assert rec["joules"] > 0 and rec["joules"] / 2 == round(rec["joules"] / 2)  # whole laps of the fake counter
    assert rec["parts"][0]["seconds"] == pytest.approx(rec["seconds"])  # the same steps as train_seconds
    tr = training_cost(json.loads((run / "run.json").read_text()), None, 100.0)
    assert tr["method"] == "rapl" and tr["kwh"] == pytest.approx(rec["kwh"]) and tr["gco2e"] == pytest.approx(rec["kwh"] * 100)
    stated = training_cost(json.loads((run / "run.json").read_text()), 200.0, 100.0)
    assert stated["method"] == "estimate" and stated["kwh"] == pytest.approx(rec["seconds"] * 200 / 3.6e6)
    cost = {"tdp_watts": 65.0, "teachers": [], "training": tr,
            "student": {"size": 32, "params": 1, "params_backbone": 1, "flops": 1.0, "latency_s": 1e-3,
                        "threads": 1, "joules": 0.065}}
    line = card_rows(cost)[-1]
    assert "measured while training (rapl" in line and "at 100 gCO2e/kWh" in line


def test_a_run_json_without_an_energy_record_is_estimated_as_before():
    tr = training_cost({"train_seconds": 3600.0, "device": "cpu", "world_size": 1}, None, 475.0)
    assert tr["method"] == "estimate" and tr["kwh"] == pytest.approx(0.065) and not tr["recorded"]


# ------------------------------------------------------------------ the monitor's calibration
def test_calibration_change_is_size_matched_and_flags_a_prevalence_shift():
    rng = np.random.default_rng(0)

    def draw(n, prev=0.5):
        y = (rng.random(n) < prev).astype(int)
        return y, rng.normal(2.0 * y - 1.0, 1.5)

    y_ref, s_ref = draw(1500)
    same = [auc_delta(y_ref, s_ref, *draw(200), 100, k)["ece"] for k in range(10)]
    assert all(e["at_size"] == 200 for e in same) and abs(np.mean([e["delta"] for e in same])) < 0.02
    assert sum(e["ci"][0] > 0 for e in same) <= 1  # an unchanged batch is not read as worse calibrated
    shifted = [auc_delta(y_ref, s_ref, *draw(200, 0.2), 100, k)["ece"] for k in range(5)]
    assert all(e["delta"] > 0 and e["ci"][0] > 0 for e in shifted)
