"""One writer per run, config.yaml written once, readable failures: a second train on a running run is refused
naming the holder; a resume with another training setting is refused (a safe one is recorded); a full disk at the
checkpoint writer names the file and ENOSPC and keeps the previous checkpoint; tampered checkpoint files are refused
without running anything."""
from __future__ import annotations

import builtins
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agglom.cli import main

ROOT = Path(__file__).parents[2]


def _args(tiny_train_args, name: str, steps: int = 4, **over) -> list:
    base = {"teachers": "[{name: tiny-clip}]", "log.checkpoint_interval": 2, "data.num_workers": 0}
    base.update(over)
    return tiny_train_args(name, steps=steps, **base)


def _run_dir(args) -> Path:
    d = dict(a.split("=", 1) for a in args)
    return Path(d["out_dir"]) / d["name"]


# --------------------------------------------------------------------------- one writer
@pytest.mark.slow
def test_a_second_train_on_a_running_run_is_refused_naming_the_holder(tiny_train_args, capsys):
    args = _args(tiny_train_args, "locked", steps=400, **{"log.checkpoint_interval": 1000})
    run = _run_dir(args)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-m", "agglom", "train", *args], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (run / "metrics.jsonl").is_file():
            time.sleep(0.2)  # the first one holds the lock and has started training
        assert first.poll() is None, "the first run ended before the second could start"
        capsys.readouterr()
        code = main(["train", *args])  # the second writer, in this process: another pid than the holder's
        err = capsys.readouterr().err
        assert code == 2, err[-2000:]
        assert f"is being trained by pid {first.pid}" in err and "choose another name=" in err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the kernel released the killed holder's lock: the next writer takes it over
    from agglom.runlock import RunLock

    with RunLock(run) as lock:
        assert lock.previous.get("pid") == first.pid  # the stale lock named the killed process, and was taken


def test_lock_is_exclusive_and_released(tmp_path):
    from agglom.runlock import RunLock, RunLockedError

    run = tmp_path / "r"
    code = ("import sys, time; from agglom.runlock import RunLock\n"
            f"with RunLock({str(run)!r}):\n print('held', flush=True); sys.stdin.readline()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            with RunLock(run):
                pass
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait()
    with RunLock(run) as lock:  # released when the holder's block ended
        assert lock.fd is not None
    assert not run.exists()  # a run dir holding only the lock is removed again


# --------------------------------------------------------------------------- config written once
def test_resume_refuses_a_changed_training_key_and_records_a_safe_one(tiny_train_args, capsys):
    args = _args(tiny_train_args, "resume", steps=2)
    assert main(["train", *args]) == 0
    run = _run_dir(args)
    config = (run / "config.yaml").read_text()

    assert main(["train", *args, "optim.lr=0.003"]) == 2
    err = capsys.readouterr().err
    assert "was trained with other settings" in err and "optim.lr: 0.002 -> 0.003" in err
    assert (run / "config.yaml").read_text() == config

    assert main(["train", *args, "data.batch_size=0"]) == 2  # a bad value on a finished run: refused at load
    assert (run / "config.yaml").read_text() == config
    assert main(["train", *args, "resume=never"]) == 2  # would overwrite the run
    assert "already holds a trained run" in capsys.readouterr().err

    assert main(["train", *args, "log.interval=1"]) == 0  # safe: allowed and recorded, config.yaml unchanged
    assert (run / "config.yaml").read_text() == config
    changes = [json.loads(x) for x in (run / "config_changes.jsonl").read_text().splitlines()]
    assert changes[-1]["changes"] == {"log.interval": [2, 1]} and changes[-1]["at_step"] == 2
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "config_change" for e in events)


# --------------------------------------------------------------------------- readable failures
def test_disk_full_at_the_checkpoint_writer(tiny_train_args, monkeypatch, capsys):
    """ENOSPC while writing step 4: a clear error naming the file, the partial folder removed, step 2 intact."""
    import agglom.train.files as files

    real_open = builtins.open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_disk_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return FullDisk(f) if ".tmp-00000004" in str(path) and "w" in mode else f

    monkeypatch.setattr(files, "open", full_disk_open, raising=False)
    args = _args(tiny_train_args, "full", steps=4)
    run = _run_dir(args)
    assert main(["train", *args]) == 1
    err = capsys.readouterr().err
    assert "checkpoint at step 4 could not be written" in err and "No space left on device (ENOSPC" in err
    assert ".tmp-00000004/" in err and "00000002 is intact" in err
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert (run / "checkpoints" / "latest").read_text() == "00000002"
    monkeypatch.undo()
    assert main(["train", *args]) == 0  # space freed: the same command resumes from step 2
    assert (run / "checkpoints" / "latest").read_text() == "00000004"


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("target", ["optim.pt", "rng-0.pt", "model.safetensors"])
def test_a_tampered_checkpoint_is_refused_and_nothing_runs(tiny_train_args, tmp_path, capsys, target):
    args = _args(tiny_train_args, f"tamper-{target}", steps=2)
    assert main(["train", *args]) == 0
    run = _run_dir(args)
    ckpt = run / "checkpoints" / "00000002"
    marker = tmp_path / "ran"
    if target == "model.safetensors":
        torch.save({"x": _Evil(str(marker))}, ckpt / target)
        expect = "is not a safetensors file: it is a zip archive"
    else:
        with open(ckpt / target, "wb") as f:
            pickle.dump({"state": _Evil(str(marker))}, f)
        expect = f"refused to load {ckpt / target}"
    assert main(["train", *args]) == 1  # the same command resumes from the tampered checkpoint
    err = capsys.readouterr().err
    assert f"cannot resume from {ckpt}" in err and expect in err and "Nothing in it was run" in err
    assert "weights_only=False" not in err and "()" not in err
    assert not marker.exists()
