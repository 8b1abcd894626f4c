"""Training through the real CLI: loss falls, exact resume after kill -9, atomic checkpoints, bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agglom.cli import main
from agglom.train.logger import MetricLogger


def run_dir_of(args):
    d = dict(a.split("=", 1) for a in args)
    return Path(d["out_dir"]) / d["name"]


def losses(run_dir):
    return [r["loss"] for r in MetricLogger.read(run_dir / "metrics.jsonl") if "loss" in r]


def test_train_loss_falls_and_run_layout(tiny_train_args, capsys):
    args = tiny_train_args("fall", steps=24, **{"optim.ema": 0.5})
    assert main(["train", *args]) == 0
    run = run_dir_of(args)
    ls = losses(run)
    assert len(ls) == 12 and ls[-1] < 0.8 * ls[0]
    for f in ("config.yaml", "metrics.jsonl", "teachers.json", "groups.json", "run.json", "checkpoints/latest"):
        assert (run / f).exists(), f
    ck = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    assert {p.name for p in ck.iterdir()} >= {"model.safetensors", "optim.pt", "objective.safetensors",
                                             "ema.safetensors", "state.json", "rng-0.pt"}
    # retention: keep=2 newest step folders
    assert len([p for p in (run / "checkpoints").iterdir() if p.name.isdigit()]) == 2
    summary = json.loads((run / "run.json").read_text())
    assert summary["step"] == 24 and summary["train_flops"] > 0
    recs = MetricLogger.read(run / "metrics.jsonl")
    assert any(k.startswith("ema/tiny-clip/") for r in recs for k in r)  # per-group, per-teacher loss EMAs
    assert "loss=" in capsys.readouterr().out


def _train_cmd(args):
    return [sys.executable, "-m", "agglom", "train", *args]


@pytest.mark.slow
def test_kill_9_then_rerun_matches_uninterrupted(tiny_train_args):
    """Resume equivalence: bitwise on CPU (same data order, RNG, optimiser state; fp32, no nondeterministic ops)."""
    over = {"objective.group": "groupdro", "objective.teacher_drop": 0.3, "optim.ema": 0.9, "log.checkpoint_interval": 3,
            "data.num_workers": 2, "optim.accum_steps": 2}
    # both runs in fresh processes with the same thread count: CPU kernels are deterministic for a fixed
    # number of threads, and the test process's own setting may have been changed by other tests
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    straight = tiny_train_args("straight", steps=15, **over)
    done = subprocess.run(_train_cmd(straight), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    killed = tiny_train_args("killed", steps=15, **over)
    run = run_dir_of(killed)
    proc = subprocess.Popen(_train_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        latest = run / "checkpoints" / "latest"
        if latest.is_file() and int(latest.read_text().strip() or 0) >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert int((run / "checkpoints" / "latest").read_text()) < 15, "the run finished before it could be killed"
    out = subprocess.run(_train_cmd(killed), env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from" in out.stdout
    for f in ("model", "objective", "ema"):
        a = load_file(str(run_dir_of(straight) / "checkpoints" / "00000015" / f"{f}.safetensors"))
        b = load_file(str(run / "checkpoints" / "00000015" / f"{f}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{f}:{k} differs after resume"

    def lines(r):
        return [{k: v for k, v in x.items() if k not in ("samples_per_s", "data_s")}
                for x in MetricLogger.read(r / "metrics.jsonl") if "loss" in x]

    assert lines(run_dir_of(straight)) == lines(run)


def test_interrupted_checkpoint_write_keeps_previous(tiny_train_args, monkeypatch):
    from agglom.engine.torch_engine import TorchEngine

    real_save = TorchEngine.save

    def dying_save(self, directory):  # killed while writing the step-12 checkpoint; 4 and 8 are written normally
        if Path(directory).name != ".tmp-00000012":
            return real_save(self, directory)
        (Path(directory) / "model.safetensors").write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(TorchEngine, "save", dying_save)
    args = tiny_train_args("crash", steps=12)
    run = run_dir_of(args)
    assert main(["train", *args]) == 130  # the CLI reports the interrupt in one line
    assert (run / "checkpoints" / "latest").read_text() == "00000008"
    assert list((run / "checkpoints").glob(".tmp-*"))  # the torn write is left aside, not in place
    load_file(str(run / "checkpoints" / "00000008" / "model.safetensors"))  # previous one still loads
    monkeypatch.undo()
    assert main(["train", *args]) == 0  # resumes from 8, cleans the torn folder
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert (run / "checkpoints" / "latest").read_text() == "00000012"


def test_nonfinite_losses_are_skipped_counted_and_stop_the_run(tiny_train_args, monkeypatch):
    import agglom.distill.task as task_mod

    real = task_mod.distillation_losses
    calls = {"n": 0}

    def sometimes_nan(*a, **k):
        loss, parts = real(*a, **k)
        calls["n"] += 1
        if calls["n"] in (3,) or calls["n"] >= 6:
            loss = loss * float("nan")
        return loss, parts

    monkeypatch.setattr(task_mod, "distillation_losses", sometimes_nan)
    args = tiny_train_args("nan", steps=20, **{"optim.max_bad_steps": 3, "log.checkpoint_interval": 100})
    with pytest.raises(FloatingPointError, match="3 non-finite losses in a row"):
        main(["train", *args])
    events = [r for r in MetricLogger.read(run_dir_of(args) / "metrics.jsonl") if r.get("event") == "nonfinite_loss"]
    assert len(events) == 4  # one isolated + three in a row
    assert not (run_dir_of(args) / "checkpoints" / "latest").exists()


@pytest.mark.parametrize("bad,expect", [
    ("teachers=[{name: no-such-teacher}]", "tiny-clip, tiny-dinov2, "),
    ("heads.summary=nope", "heads.summary='nope': choose one of attn, mlp, resmlp"),
    ("optim.lrr=1", "closest valid keys: optim.lr"),
    ("objective.group=nope", "objective.group='nope': choose one of balanced, catchup, erm, excess, gap, groupdro"),
])
def test_bad_recipe_input_fails_clearly(tiny_train_args, capsys, bad, expect):
    args = [a for a in tiny_train_args("bad") if not a.startswith(bad.split("=")[0] + "=")] + [bad]
    assert main(["train", *args]) == 2
    assert expect in capsys.readouterr().err


def test_bogus_key_via_console_script_exits_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "agglom", "train", "recipe=recipes/demo.yaml", "bogus.key=1"],
                         capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert out.returncode == 2
    assert "unknown key 'bogus'" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tiny_train_args, free_port):
    args = tiny_train_args("ddp", steps=6, **{"data.epoch_samples": 64})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port),
           "-m", "agglom", "train", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    run = run_dir_of(args)
    summary = json.loads((run / "run.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 6
    assert (run / "checkpoints" / "00000006" / "model.safetensors").is_file()


def test_a_failed_launch_leaves_the_run_config_alone(tiny_train_args, capsys):
    args = tiny_train_args("keep", steps=2)
    assert main(["train", *args]) == 0
    run = run_dir_of(args)
    before = (run / "config.yaml").read_text()
    bad = [a for a in args if not a.startswith("teachers=")] + ["teachers=[{name: tiny-clipp}]"]
    assert main(["train", *bad]) == 2
    assert (run / "config.yaml").read_text() == before
    out, err = capsys.readouterr()
    assert "tiny-clipp" in err and "tiny-clip" in err
    fresh = [a.replace("name=keep", "name=never") for a in bad]
    assert main(["train", *fresh]) == 2
    assert not (run.parent / "never").exists()  # nothing is created for a launch that fails while building
