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
    assert sections == set("abcdefgh")
    for r in report["rows"]:
        if r["section"] in "abcd":
            assert r["value"] > 0 and r["baseline"] > 0 and r["ratio"] > 0, r
    f = [r for r in report["rows"] if r["section"] == "f"]
    assert len(f) == 9 and all(r["summary_cos"] > 0.99 for r in f)
    for mode in ("online", "cached"):  # (h): the six phases cover the step
        h = [r for r in report["rows"] if r["section"] == "h" and f"({mode}" in r["metric"]]
        parts = [r for r in h if not r["metric"].startswith("phase sum")]
        assert len(parts) == 6 and all(r["value"] >= 0 and r["unit"] == "of step" for r in parts), h
        assert 0.9 <= sum(r["value"] for r in parts) <= 1.1, h
    printed = capsys.readouterr().out
    assert "metric" in printed and "ratio" in printed and "met" in printed
