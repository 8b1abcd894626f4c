"""`python -m benchmarks.bench quick=true`: every section runs at toy size and bench.json holds the rows."""
import json

import pytest

from benchmarks.bench import main, parse_args


def test_bench_options_are_checked():
    assert parse_args(["quick=true", "steps=3"])["steps"] == 3
    with pytest.raises(SystemExit, match="unknown option"):
        parse_args(["bogus=1"])
    with pytest.raises(SystemExit, match="device=cpu"):
        parse_args(["device=tpu"])


@pytest.mark.slow
def test_bench_quick_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["quick=true", f"out={out}"]) == 0
    report = json.loads(out.read_text())
    sections = {r["section"] for r in report["rows"]}
    assert sections == set("abcdefghi")
    for r in report["rows"]:
        if r["section"] in "abcd":
            assert r["value"] > 0 and r["baseline"] > 0 and r["ratio"] > 0, r
    ref = [r for r in report["rows"] if r["section"] == "g" and "timm step alone" in r["metric"]]
    assert len(ref) == 1 and ref[0]["value"] > 0 and 0 < ref[0]["ratio"] and ref[0]["flops_per_sample"] > 0, ref
    g = [r for r in report["rows"] if r["section"] == "g"]
    vs = [r for r in g if "training step vs the student's timm step" in r["metric"]]
    assert [r["metric"].rsplit("(", 1)[1] for r in vs] == ["online teachers)", "cached teachers)"], vs
    assert all(r["ratio"] > 0 and r["baseline"] == ref[0]["value"] and r["met"] in (True, False) for r in vs), vs
    alone = [r for r in g if "agglom's step alone on one batch" in r["metric"]]
    assert [r["metric"].rsplit("(", 1)[1] for r in alone] == ["online teachers)", "cached teachers)"], alone
    assert all(r["ratio"] > 0 and r["met"] in (True, False) and r["flops_per_sample"] > 0 for r in alone), alone
    f = [r for r in report["rows"] if r["section"] == "f"]
    assert len(f) == 9 and all(r["summary_cos"] > 0.99 for r in f)
    for mode in ("online", "cached"):  # (h): the six phases cover the step
        h = [r for r in report["rows"] if r["section"] == "h" and f"({mode}" in r["metric"]]
        parts = [r for r in h if not r["metric"].startswith("phase sum")]
        assert len(parts) == 6 and all(r["value"] >= 0 and r["unit"] == "of step" for r in parts), h
        assert 0.9 <= sum(r["value"] for r in parts) <= 1.1, h
    i = [r for r in report["rows"] if r["section"] == "i"]  # (i): two peak-RSS rows and the SAM-1024 row
    assert len(i) == 3 and all(r["value"] > 0 for r in i), i
    assert i[0]["baseline"] > 0 and i[0]["ratio"] > 0 and i[0]["bytes_per_sample"]["512"] > i[0]["bytes_per_sample"]["128"]
    assert i[2]["unit"] == "s/image" and i[2]["samples"] == 4
    printed = capsys.readouterr().out
    assert "metric" in printed and "ratio" in printed and "met" in printed
    assert "training step vs the student's timm step (cached teachers)" in printed  # the step-vs-timm rows
    assert "agglom's step alone on one batch vs the student's timm step (online teachers)" in printed
    assert "phase heads_loss (cached)" in printed and "phase backward (online)" in printed  # the phase breakdown


def test_step_vs_timm_rows_divide_the_training_rates_by_the_timm_steps():
    """Section g's step-vs-timm rows come from the utilisation rows: value = the step's GFLOP/s, baseline = the timm
    step's, met against the 0.92x target; no row without a timm reference."""
    from benchmarks.common import Rows
    from benchmarks.training import add_step_vs_timm

    rows = Rows()
    add_step_vs_timm(rows)
    assert rows.rows == []
    rows.add("g", "FLOP utilisation, training (online teachers)", 9.3, 50.0, "GFLOP/s")
    rows.add("g", "FLOP utilisation, training (cached teachers)", 8.0, 50.0, "GFLOP/s")
    rows.add("g", "FLOP utilisation, the student's timm step alone (no heads, teachers or data)", 10.0, 50.0, "GFLOP/s")
    add_step_vs_timm(rows)
    online, cached = rows.rows[-2:]
    assert online["metric"] == "FLOP rate, training step vs the student's timm step (online teachers)"
    assert online["ratio"] == pytest.approx(0.93) and online["met"] is True and online["baseline"] == 10.0
    assert cached["ratio"] == pytest.approx(0.8) and cached["met"] is False


def test_highres_pieces_pack_16_bit_and_read_at_the_training_size(tmp_path):
    """(i)'s parts at toy size, in this process: sources are 16-bit, max_side shrinks them on packing, the reader
    gives batches at the training size and a peak RSS at least the RSS it started from."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    from agglom.data.decode import png_bit_depth
    from benchmarks.highres import _bytes_per_sample, pack_at, read_peak, write_sources

    csv = write_sources(tmp_path / "src", 2, side=64)
    assert png_bit_depth((tmp_path / "src" / "img0.png").read_bytes()) == 16
    big, small = pack_at(csv, tmp_path / "big", 64), pack_at(csv, tmp_path / "small", 16)
    assert big["params"]["downsized"] == 0 and small["params"]["downsized"] == 2 and small["samples"] == 2
    assert _bytes_per_sample(tmp_path / "big") > _bytes_per_sample(tmp_path / "small")
    with tarfile.open(next((tmp_path / "small" / "train").glob("*.tar"))) as tar:
        png = next(tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".png"))
    assert png_bit_depth(png) == 16 and np.asarray(Image.open(io.BytesIO(png))).shape == (16, 16)
    got = read_peak(str(tmp_path / "big"), 32, 4, "data.shuffle_buffer=8", "data.shuffle_buffer_mb=1")
    assert got["batch_shape"] == [4, 3, 32, 32] and got["samples"] == 4 and got["shuffle_buffer"] == 8
    assert got["shuffle_buffer_mb"] == 1
    assert got["peak_mib"] >= got["rss_before_mib"] > 0


def test_scaling_pieces_train_in_process_and_report_step_time_and_peak_rss(tmp_path):
    """(j)'s subprocess body at toy size, in this process: a real training run with two teachers, its median step
    time and a peak RSS at least the RSS it started from; the teacher sets are 1, 2 and 4 distinct cards."""
    from agglom.data.synth import SynthParams, write_synth
    from benchmarks.scaling import teacher_sets, train_peak

    root = tmp_path / "synth"
    write_synth(str(root), SynthParams(n=80, image_size=32, seed=0), shard_size=40)
    sets = teacher_sets(tmp_path)
    assert [len(v) for v in sets.values()] == [1, 2, 4] and len(set(sets[4])) == 4
    s = dict(n=80, image_size=32, shard=40, batch=8, steps=5, epoch=64, device="cpu",
             student="{patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}")
    r = train_peak({"work": str(tmp_path), "root": str(root), "s": s, "name": "t2", "teachers": sets[2]})
    assert r["steps"] == 2, r  # 5 batches: 4 intervals between them, the first two left out
    assert r["step_ms"] > 0 and r["peak_mib"] >= r["rss_before_mib"] > 0, r
    assert (tmp_path / "runs" / "t2" / "run.json").is_file()


def test_real_teacher_benchmark_options_and_summary(tmp_path):
    """benchmarks.real_teacher: options are checked like bench's, and its summary lifts per-group values with their
    intervals out of the eval report's fidelity, dense, sam_prompts and probe sections."""
    from agglom.demo_real import summarise
    from benchmarks.real_teacher import parse_args

    assert parse_args(["quick=true", "pool=1", "upsample=4"])["n"] == 100
    with pytest.raises(SystemExit, match="unknown option 'pools'"):
        parse_args(["pools=2"])

    def dice(a, b):
        return {"dice": {"value": (a + b) / 2, "ci": [0.1, 0.9]},
                "groups": {"A": {"dice": {"value": a, "ci": [a - 0.1, a + 0.1]}}, "B": {"dice": {"value": b}}}}

    report = {
        "fidelity": {"site": {"t/spatial": {"overall": {"value": 0.7, "ci": [0.6, 0.8]},
                                            "by_group": {"A": {"value": 0.8, "ci": [0.7, 0.9]},
                                                         "B": {"value": 0.5, "ci": [0.4, 0.6]}}}}},
        "dense": {"models": {"s": {"attributes": {"site": dice(0.6, 0.4)}}}},
        "sam_prompts": {"teachers": {"t": {"models": {"s": {"attributes": {"site": dice(0.7, 0.5)}}},
                                           "agreement": {"attributes": {"site": dice(0.8, 0.6)}}, "n": 9,
                                           "adapter_grid": [64, 64], "embedding_cosine": 0.9}}},
        "models": {"s": {"attributes": {"site": {"auc": {"value": 0.8, "ci": [0.7, 0.9]},
                                                 "worst_group_auc": {"value": 0.7, "group": "B"}}}}},
    }
    s = summarise(report)
    assert s["fidelity_r2"]["t/spatial"] == {"A": [0.8, 0.7, 0.9], "B": [0.5, 0.4, 0.6], "overall": [0.7, 0.6, 0.8]}
    assert s["dense_dice"]["s"] == {"A": [0.6, 0.5, 0.7], "B": [0.4, None, None], "overall": [0.5, 0.1, 0.9]}
    assert s["sam_box_dice"]["t"]["agreement"]["A"] == [0.8, 0.7, 0.9] and s["sam_box_dice"]["t"]["n"] == 9
    assert s["probe_auc"] == {"s": {"overall": [0.8, 0.7, 0.9], "worst_group": [0.7, None, None], "worst": "B"}}
    from agglom.demo_real import summary_markdown

    md = summary_markdown(s, {"eval": 5.0, "total": 5.0}, tmp_path, tmp_path / "runs" / "student")
    assert "| t/spatial | 0.800 [0.700, 0.900] | 0.500 [0.400, 0.600] | 0.700 [0.600, 0.800] |" in md
    assert "| s | 0.800 [0.700, 0.900] | 0.700 (B) |" in md and "total 5 s (eval 5 s)" in md
