"""Per-phase step timing (log.phases): the timer itself, and a real tiny training run with it on and off."""
import time
from pathlib import Path

import pytest

from agglom.cli import main
from agglom.phases import PHASES, PhaseTimer
from agglom.train.logger import MetricLogger


def test_disabled_timer_records_nothing():
    t = PhaseTimer(False)
    t.start()
    time.sleep(0.01)
    t.mark("teachers")
    t.add("data", 1.0)
    t.stepped()
    assert t.totals == {} and t.steps == 0 and t.lap() == {}


def test_enabled_timer_attributes_sleeps_to_their_phase():
    t = PhaseTimer(True)
    for _ in range(2):  # two steps: the lap is seconds per step
        t.start()
        time.sleep(0.05)
        t.mark("student")
        time.sleep(0.01)
        t.mark("backward")
        t.mark("backward")  # a second mark adds (almost) nothing
        t.add("data", 0.2)
        t.stepped()
    lap = t.lap()
    assert list(lap) == ["phase_s/data", "phase_s/student", "phase_s/backward"]  # step order
    assert lap["phase_s/data"] == pytest.approx(0.2)
    assert 0.05 <= lap["phase_s/student"] < 0.2  # loose upper bounds: a loaded machine oversleeps
    assert 0.01 <= lap["phase_s/backward"] < 0.05  # the student's sleep is not charged here
    assert t.lap() == {}  # reset: nothing since the last lap
    time.sleep(0.05)
    t.start()  # what ran before start() is charged to no phase
    t.mark("optimiser")
    t.stepped()
    assert t.lap()["phase_s/optimiser"] < 0.04


def _records(args):
    d = dict(a.split("=", 1) for a in args)
    recs = MetricLogger.read(Path(d["out_dir"]) / d["name"] / "metrics.jsonl")
    return [r for r in recs if "loss" in r]


def test_tiny_run_logs_every_phase_and_timing_leaves_the_maths_alone(tiny_train_args):
    on = tiny_train_args("phases-on", steps=6, **{"log.phases": "true"})
    off = tiny_train_args("phases-off", steps=6)
    assert main(["train", *on]) == 0
    assert main(["train", *off]) == 0
    r_on, r_off = _records(on), _records(off)
    assert len(r_on) == len(r_off) == 3  # log.interval 2
    keys = {f"phase_s/{p}" for p in PHASES}
    for r in r_on:
        assert keys <= set(r), sorted(r)
        assert all(r[k] >= 0 for k in keys)
        assert sum(r[k] for k in keys) > 0
    assert not any(k.startswith("phase_s/") for r in r_off for k in r)
    assert [r["loss"] for r in r_on] == [r["loss"] for r in r_off]  # bitwise: timing does not change the maths


def test_log_phases_must_be_a_boolean(tiny_train_args, capsys):
    assert main(["train", *tiny_train_args("bad", steps=1, **{"log.phases": "banana"})]) == 2
    assert "log.phases" in capsys.readouterr().err
