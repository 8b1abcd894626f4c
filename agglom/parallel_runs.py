"""Independent agglom commands run side by side, each a child process with its share of the cores (the demo's and
the ablation's students, evaluations and fine-tuned teachers).

Why: on a small CPU machine one training process does not fill the cores. The demo's student on 2 cores ran its
main thread at ~100% and torch's second intra-op thread at ~50% (measured with ``top -H``), and two threads that
meet at a barrier on every operation lose a time slice whenever either is descheduled. Two single-thread processes,
each training its own student, keep both cores busy with no barrier between them (docs/results.md, "The demo's run
time"). A child's numbers depend on its thread count (floating-point rounding), never on which other child runs
beside it, so a run is reproducible for a given ``jobs`` and machine.

:func:`plan` says how many children run at once and how many threads each gets; :func:`run_all` runs a list of
command lines ``jobs`` at a time, each child's output in its own log file, and stops at the first failure (the
children still running are terminated; what they had finished stays, and the next run reuses it).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple


@dataclass(frozen=True)
class Job:
    argv: List[str]  # the agglom command line, without the program: ["train", "recipe=...", ...]
    label: str  # what the progress lines call it, e.g. "student-erm-s1"
    log: Path  # where its stdout and stderr go
    after: Tuple[str, ...] = ()  # labels of jobs in the same run that must finish first (others: done already)


def cores() -> int:
    """The cores this process may use (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def plan(jobs: int, n: int) -> Tuple[int, int]:
    """(children at once, threads each) for ``n`` independent runs. ``jobs=0``: one child per core, at most 4.
    The threads depend on ``jobs`` and the cores only, never on ``n``, so a run resumed with one student left gets
    the same thread count, and the same rounding, as when it was one of several."""
    c = cores()
    k = max(1, min(c, 4) if jobs <= 0 else jobs)
    return max(1, min(k, n)), max(1, c // k)


def in_order(jobs: Sequence[Job]) -> List[Job]:
    """``jobs`` in an order that runs each after the jobs it waits for (the given order where it already does); a
    label named in ``after`` but missing from ``jobs`` counts as done. ValueError on a cycle or a repeated label."""
    labels = [j.label for j in jobs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"job labels repeat: {labels}")
    done: set = set()
    pending, out = list(jobs), []
    while pending:
        job = _next_ready(pending, done, set(labels))
        if job is None:
            raise ValueError("jobs wait for each other in a circle: " + ", ".join(j.label for j in pending))
        pending.remove(job)
        out.append(job)
        done.add(job.label)
    return out


def _next_ready(pending: Sequence[Job], done: set, known: set) -> "Job | None":
    """The first pending job whose ``after`` jobs (those in this run) have all finished."""
    return next((j for j in pending if all(a in done or a not in known for a in j.after)), None)


def run_all(jobs: Sequence[Job], at_once: int, threads: int) -> None:
    """Run ``jobs`` as ``python -m agglom ...`` children, ``at_once`` at a time with ``threads`` threads each; a job
    starts once the jobs it waits for (``Job.after``) have finished, the first ready one in the given order first.
    Prints a line when each starts and ends; a failure prints the end of its log and raises SystemExit."""
    in_order(jobs)  # a cycle or a repeated label fails here, before any child starts
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    pending = list(jobs)
    known = {j.label for j in jobs}
    finished: set = set()
    running: List[tuple] = []
    try:
        while pending or running:
            while len(running) < at_once:
                job = _next_ready(pending, finished, known)
                if job is None:
                    break
                pending.remove(job)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                fh = open(job.log, "w")
                proc = subprocess.Popen([sys.executable, "-m", "agglom", *job.argv], stdout=fh,
                                        stderr=subprocess.STDOUT, env=env)
                running.append((job, proc, fh, time.perf_counter()))
                print(f"  started {job.label} ({threads} thread{'s' if threads > 1 else ''}; log {job.log})",
                      flush=True)
            time.sleep(0.2)
            for item in list(running):
                job, proc, fh, t0 = item
                code = proc.poll()
                if code is None:
                    continue
                fh.close()
                running.remove(item)
                if code:
                    tail = job.log.read_text(errors="replace").splitlines()[-15:]
                    print("\n".join(["  " + x for x in tail]), file=sys.stderr)
                    raise SystemExit(f"agglom: `agglom {' '.join(job.argv[:2])} ...` ({job.label}) failed with exit "
                                     f"code {code}; its log: {job.log}")
                finished.add(job.label)
                print(f"  done {job.label} in {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        for _job, proc, fh, _ in running:  # a failure or Ctrl-C: stop the others (their finished work stays)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            fh.close()
