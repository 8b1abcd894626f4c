"""agglom/parallel_runs.py: how many children at once, and jobs that wait for others (``Job.after``) start only once
those have finished, in sequence (``in_order``) and side by side (``run_all``, real child processes)."""
import re

import pytest

from agglom.parallel_runs import Job, in_order, plan, run_all


def _job(tmp_path, label, after=(), argv=("teachers", "list")):
    return Job(list(argv), label, tmp_path / "logs" / f"{label}.log", after=tuple(after))


def test_plan_threads_do_not_depend_on_the_number_of_jobs(monkeypatch):
    monkeypatch.setattr("agglom.parallel_runs.cores", lambda: 2)
    assert plan(0, 6) == (2, 1) and plan(0, 1) == (1, 1)  # one student left: the same thread count
    assert plan(1, 6) == (1, 2) and plan(4, 6) == (4, 1)


def test_in_order_puts_each_job_after_what_it_waits_for(tmp_path):
    jobs = [_job(tmp_path, "fair-s0", ["erm-s0"]), _job(tmp_path, "eval erm-s0", ["erm-s0"]),
            _job(tmp_path, "erm-s0"), _job(tmp_path, "eval fair-s0", ["fair-s0", "eval erm-s0", "erm-s9"])]
    order = [j.label for j in in_order(jobs)]
    assert order == ["erm-s0", "fair-s0", "eval erm-s0", "eval fair-s0"]  # erm-s9 is not in the run: done already
    ready = [_job(tmp_path, "a"), _job(tmp_path, "b", ["a"])]
    assert in_order(ready) == ready  # an order that already works is kept
    with pytest.raises(ValueError, match="circle: x, y"):
        in_order([_job(tmp_path, "x", ["y"]), _job(tmp_path, "y", ["x"])])
    with pytest.raises(ValueError, match="repeat"):
        in_order([_job(tmp_path, "x"), _job(tmp_path, "x")])


def test_run_all_starts_a_job_after_those_it_waits_for(tmp_path, capsys):
    jobs = [_job(tmp_path, "first"), _job(tmp_path, "second", ["first"]), _job(tmp_path, "free")]
    run_all(jobs, 2, 1)
    lines = [x.strip() for x in capsys.readouterr().out.splitlines()]
    events = [re.sub(r" \(.*| in \d+ s", "", x) for x in lines]
    # two slots: "first" and "free" start together; "second" only after "first" is done
    assert events.index("started second") > events.index("done first")
    assert events.index("started free") < events.index("done first")
    assert all((tmp_path / "logs" / f"{n}.log").read_text() for n in ("first", "second", "free"))


def test_run_all_stops_at_a_failure_and_names_it(tmp_path):
    jobs = [_job(tmp_path, "bad", argv=("teachers", "show", "no-such-card")), _job(tmp_path, "after", ["bad"])]
    with pytest.raises(SystemExit, match=r"\(bad\) failed with exit code 2"):
        run_all(jobs, 2, 1)
    assert not (tmp_path / "logs" / "after.log").exists()  # it never started
